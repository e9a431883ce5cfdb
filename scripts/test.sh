#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-test.txt
python -m pip install -q --no-deps -e .
# Real Fashion-MNIST for the embedded testbed (Debian package, MIT); tests that need it skip without it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || echo "note: dataset-fashion-mnist not installed"
fi
# Upstream tomesd 0.1.3, unpacked as `tomesd_upstream` for the parity test (skips if unavailable).
python -m eval.speed.upstream >/dev/null 2>&1 || echo "note: upstream tomesd unavailable; parity test will skip"
# Lint (pyproject.toml [tool.ruff]) before the tests.
python -m ruff check .
python -m pytest -q tests "$@"
