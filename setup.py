"""One install gives both packages: `tomesd` (token-reduction engine) and `bigain` (runners)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    """Non-comment lines of a requirements file."""
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-"))]


setup(
    name="bigain",
    version="0.1.0",
    description="Training-free token compression for diffusion models: generation and zero-shot classification",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tomesd", "tomesd.*", "bigain", "bigain.*", "eval", "eval.*"]),
    include_package_data=True,
    package_data={"bigain": ["prompts/*.csv", "prompts/*.txt", "assets/**/*"], "eval": ["*.json"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={"test": read_requirements("requirements-test.txt")},
)
