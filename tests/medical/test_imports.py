"""medical's modules import each other without a cycle (calibration used to import tasks and back)."""

import ast
from pathlib import Path

MEDICAL = Path(__file__).resolve().parents[2] / "medical"


def local_imports(path: Path) -> set[str]:
    """Sibling modules imported anywhere in the file, function bodies included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:
                names.update(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.startswith("medical."):
                names.add(node.module.split(".")[1])
    return names


def test_medical_modules_form_no_import_cycle() -> None:
    graph = {p.stem: local_imports(p) for p in MEDICAL.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    # the disease type names its calibration stage, which holds the calibrated head
    assert "calibration" in graph["tasks"] and "tasks" not in graph["calibration"]
