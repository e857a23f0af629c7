"""Reading a table file: CSV / TSV, Parquet or JSON lines (optionally compressed), by its suffix.

A path is absolute, relative to the working directory, or ``pkg:<package>/<file>``: a file
shipped inside an installed Python package (bundled demo data, read offline).
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")


def table_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise DataError(f"{path}: unknown table format; name the file {', '.join(f'*{s}' for s in FORMATS)}")
    return fmt


def resolve_path(path: str | Path) -> Path:
    """The file a table path names (see the module docstring)."""
    text = str(path)
    if not text.startswith("pkg:"):
        return Path(path)
    package, _, inner = text[len("pkg:") :].partition("/")
    if not package or not inner:
        raise DataError(f"table path {text!r} must look like 'pkg:<package>/<file inside it>'")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"table path {text!r}: package '{package}' is not installed (pip install {package})")
    return Path(next(iter(spec.submodule_search_locations))) / inner


#: how each format numbers its rows; ``read_table`` gives a frame these numbers as its index, so a row
#: keeps its file number through every split and selection (the index name says which convention)
ROW_NUMBERS = {
    "csv": ("row {} (header = row 1)", 2),
    "tsv": ("row {} (header = row 1)", 2),
    "jsonl": ("line {}", 1),
    "parquet": ("row {} (first row = 1)", 1),
}


def file_row(index: pd.Index, position: int) -> str:
    """The row at ``position`` named as the file shows it (a frame from ``read_table``), else by its
    index label (a DataFrame given in Python)."""
    name = index.name
    label = index[position]
    return name.format(label) if isinstance(name, str) and "{}" in name else f"index {label!r}"


def read_table(path: str | Path) -> pd.DataFrame:
    """The file as a DataFrame; empty cells are missing (NaN). Its index holds the file's row numbers
    (:data:`ROW_NUMBERS`, :func:`file_row`)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise DataError("reading tables needs pandas: pip install pandas") from e
    path = resolve_path(path)
    if not path.is_file():
        raise DataError(f"table file {path} does not exist")
    fmt = table_format(path)
    try:
        frame = _read(path, fmt)
    except ImportError as e:
        raise DataError(f"{path}: reading {fmt} needs an extra package: {e}") from e
    except DataError:
        raise
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path} is empty; give a header row and data rows") from e
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{path} is not a readable {fmt} file: {e}") from e
    if frame.empty:
        raise DataError(f"{path} has no data rows (only {list(frame.columns) or 'nothing'}); add rows below the header")
    name, first = ROW_NUMBERS[fmt]
    frame.index = pd.RangeIndex(first, first + len(frame), name=name)
    return frame


def _read(path: Path, fmt: str) -> pd.DataFrame:
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "jsonl":
        check_json_lines(path)
        return pd.read_json(path, lines=True)
    sep = "\t" if fmt == "tsv" else ","
    _check_header(pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str).iloc[0].tolist(), path)
    return pd.read_csv(path, sep=sep, low_memory=False)


def check_json_lines(path: Path) -> None:
    """Name the first line that is not one JSON object (pandas' message names neither file nor line)."""
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno}); fix or remove the line"
                ) from None
            if not isinstance(value, dict):
                raise DataError(
                    f"{path}, line {number}: a JSON-lines table needs one object per line, got {type(value).__name__}"
                )


def _check_header(names: list[str], path: Path) -> None:
    """Refuse a header naming a column twice: pandas would rename the second ``x.1`` and read it as
    one more feature."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise DataError(
                f"{path}: the header (row 1) names column '{name}' twice (columns {seen[name]} and {position}); "
                "rename or remove one of them"
            )
        seen[name] = position
