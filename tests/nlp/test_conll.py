from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DataError
from nlp.conll import parse_conll, read_conll


def test_parse_conll_sentences() -> None:
    text = "Alice\tB-person\nwent\tO\n\t\nParis\tB-geo-loc\n!\tO\n"
    assert parse_conll(text, "x") == [(["Alice", "went"], ["B-person", "O"]), (["Paris", "!"], ["B-geo-loc", "O"])]


def test_line_without_tag_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("Alice\tB-person\nwent\n")
    with pytest.raises(DataError, match=r"bad\.conll, line 2: 'went' has a token but no tag"):
        read_conll(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_conll(tmp_path / "nope.txt")
