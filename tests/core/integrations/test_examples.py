"""docs/balancing.md's Lightning and Hugging Face Trainer examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCS = (ROOT / "docs" / "balancing.md").read_text()


def _example(heading: str) -> str:
    body = DOCS.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, f"no python block under '### {heading}'"
    return match.group(1)


@pytest.mark.parametrize(
    ("heading", "library", "balancer"),
    [("Lightning", "lightning", "model.balancer"), ("Hugging Face Trainer", "transformers", "balancer")],
)
def test_the_docs_example_trains(heading, library, balancer, tmp_path, monkeypatch):
    pytest.importorskip(library)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(_example(heading), f"docs/balancing.md ({heading})", "exec"), scope)
    assert eval(balancer, scope).steps == 4  # every step went through the balancer
