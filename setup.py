"""One install gives both packages: `tomesd` (token-reduction engine) and `bigain` (runners)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    """Non-comment lines of a requirements file."""
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-"))]


def read_version() -> str:
    """The one version number: `tomesd.__version__` (read from the file, nothing imported)."""
    text = (HERE / "tomesd" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="bigain",
    version=read_version(),
    description="Training-free token compression for diffusion models: generation and zero-shot classification",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tomesd", "tomesd.*", "bigain", "bigain.*", "eval", "eval.*"]),
    include_package_data=True,
    package_data={"bigain": ["data/prompts/*.csv", "data/prompts/*.txt", "assets/**/*"], "eval": ["*.json"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={"test": read_requirements("requirements-test.txt")},
)
