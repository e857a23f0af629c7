"""Package boundaries: core never imports a domain package; our packages are the ones imported."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("vision", "nlp", "medical")


def _imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_domain_package(path):
    assert not (_imported_top_levels(path) & set(DOMAINS)), f"{path} imports a domain package"


@pytest.mark.parametrize("package", ["core", *DOMAINS])
def test_packages_resolve_inside_the_repo(package):
    if not (ROOT / package).is_dir():
        pytest.fail(f"package folder {package}/ is missing")
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().is_relative_to(ROOT), f"{package} resolves to {module.__file__}"


EXTRAS = {"timm", "torchvision", "transformers", "datasets", "pandas", "sklearn", "scipy", "matplotlib", "torchjd"}


@pytest.mark.parametrize("path", sorted((ROOT / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_needs_no_extra_at_import_time(path):
    """Optional dependencies are imported inside the functions that need them, never at module level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top.add(node.module.split(".")[0])
    assert not (top & EXTRAS), f"{path} imports {sorted(top & EXTRAS)} at module level"
