"""The tqdm progress bar of rank 0, with the latest task losses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, mininterval=1.0, desc=desc)
    try:
        yield bar
    finally:
        bar.close()
