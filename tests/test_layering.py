"""Package boundaries and layers: imports only go down, and no module imports itself back.

Layers of ``core`` (folders show them): foundations (``core/*.py``, ``core/architectures``) <
``core/balancing``, ``core/tabular``, ``core/rundir`` < ``core/reports`` < ``core/engine`` <
``core/experiments`` < the command line (``core/cli.py``). ``core/__init__`` only re-exports names
lazily. Domain packages sit above core; core never imports them. A cycle is refused even when an
``if TYPE_CHECKING:`` block hides it from the interpreter: it is still two modules that know each
other.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("vision", "nlp", "medical")
PACKAGES = ("core", *DOMAINS)
#: a core module's layer, from its folder (the CLI is the top)
LAYERS = {
    "": 0,
    "architectures": 0,
    "balancing": 1,
    "tabular": 1,
    "rundir": 1,
    "reports": 2,
    "engine": 3,
    "integrations": 3,
    "experiments": 4,
    "cli": 5,
}
DOMAIN_LAYER = max(LAYERS.values()) + 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations only: no import at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, annotations: bool = False) -> set[str]:
    """Modules of our packages that ``path`` imports at run time, anywhere in the file (lazy ones too);
    with ``annotations``, those imported for type checking only as well."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = set() if annotations else _type_checking_lines(tree)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    modules = {module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # ``from pkg import module`` imports the module, ``from m import name`` m
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != module_name(path)}


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "core":
        return DOMAIN_LAYER
    if len(parts) == 1:
        return -1  # the lazy public API
    return LAYERS.get(parts[1], 0) if len(parts) > 2 or parts[1] in LAYERS else 0


CORE_FILES = sorted((ROOT / "core").rglob("*.py"))
ALL_FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_only_go_down(path):
    me = module_name(path)
    if me == "core":
        return
    upward = sorted(m for m in imports(path) if layer(m) > layer(me) or layer(m) == -1)
    assert not upward, f"{me} (layer {layer(me)}) imports {upward} from a higher layer"


def test_the_layers_are_the_folders():
    folders = {p.name for p in (ROOT / "core").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(LAYERS), f"core/ folders without a layer: {sorted(folders - set(LAYERS))}"
    assert {"balancing", "engine", "experiments"} <= folders


def test_no_import_cycles():
    graph = {module_name(p): imports(p, annotations=True) - {"core"} for p in ALL_FILES}
    # a package's __init__ re-exporting its own modules is not a cycle through them
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(f"{name}.") or "." not in name}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_only_the_experiment_builder_imports_the_trainer():
    """Everything else builds a run through :class:`core.experiments.builder.Experiment`; helpers of the
    loop take plain values, never the trainer."""
    trainer, builder = "core.engine.trainer", "core.experiments.builder"
    users = sorted(module_name(p) for p in ALL_FILES if trainer in imports(p, annotations=True))
    assert users == [builder], f"modules other than {builder} import {trainer}: {users}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_domain_package(path):
    assert not {m.split(".")[0] for m in imports(path)} & set(DOMAINS), f"{path} imports a domain package"


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_resolve_inside_the_repo(package):
    if not (ROOT / package).is_dir():
        pytest.fail(f"package folder {package}/ is missing")
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().is_relative_to(ROOT), f"{package} resolves to {module.__file__}"


EXTRAS = {
    "timm",
    "torchvision",
    "transformers",
    "datasets",
    "pandas",
    "sklearn",
    "scipy",
    "matplotlib",
    "torchjd",
    "lightning",
    "accelerate",
}
#: adapters to one optional library each, imported only by their users: they import it at module level
ADAPTERS = {"core/integrations/lightning.py", "core/integrations/hf.py"}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_needs_no_extra_at_import_time(path):
    """Optional dependencies are imported inside the functions that need them, never at module level."""
    if str(path.relative_to(ROOT)) in ADAPTERS:
        return
    tree = ast.parse(path.read_text(), filename=str(path))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top.add(node.module.split(".")[0])
    assert not (top & EXTRAS), f"{path} imports {sorted(top & EXTRAS)} at module level"


def test_reading_a_config_imports_no_engine():
    import subprocess
    import sys

    code = "import sys, core.config; print(sorted(m for m in sys.modules if m.startswith('core.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "engine" not in out and "balancing" not in out and "experiments" not in out, out


def test_the_architecture_page_names_the_floors_and_files_that_exist():
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    floors = {m.group(2).strip("/").split("/")[-1]: int(m.group(1)) for m in re.finditer(r"\| (\d) \| `([^`]+)`", page)}
    for folder, number in floors.items():
        if folder in LAYERS:
            assert LAYERS[folder] == number, f"docs/architecture.md puts core/{folder}/ on floor {number}"
    paths = set(re.findall(r"`((?:core|vision|nlp|medical|tests)/[\w/]+\.py)`", page))
    assert paths and not [p for p in sorted(paths) if not (ROOT / p).is_file()]
