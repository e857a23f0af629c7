"""docs/architectures.md: its Python examples run as written, in order, and every architecture has one."""

from __future__ import annotations

import re
from pathlib import Path

from core.architectures import ARCHITECTURES

DOC = (Path(__file__).resolve().parents[3] / "docs" / "architectures.md").read_text()


def test_examples_run_in_order():
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    assert len(blocks) > len(ARCHITECTURES.names()) // 2
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/architectures.md block {i}", "exec"), namespace)


def test_every_architecture_is_documented_with_an_example():
    for name in ARCHITECTURES.names():
        assert f"| `{name}` |" in DOC, f"{name} is missing from the table"
        assert f'"name": "{name}"' in DOC or name == "hard", f"{name} has no worked example"
