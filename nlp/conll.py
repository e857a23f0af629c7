"""CoNLL reader: one ``token ... tag`` line per word, blank lines between sentences."""

from __future__ import annotations

from pathlib import Path

from core.errors import DataError


def parse_conll(text: str, source: str) -> list[tuple[list[str], list[str]]]:
    """Sentences as (words, tags); the tag is the last column. ``source`` names the file in errors."""
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError(
                f"{source}, line {number}: {line.strip()!r} has a token but no tag; "
                "every non-blank line needs 'token<TAB>tag'"
            )
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CoNLL file {path} does not exist")
    return parse_conll(path.read_text(encoding="utf-8"), str(path))
