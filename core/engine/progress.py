"""The tqdm progress bar of rank 0, with the latest task losses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import TrainConfig
    from .trainer import Trainer


@contextlib.contextmanager
def progress_bar(trainer: Trainer, c: TrainConfig) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=c.max_steps,
        initial=trainer.step,
        disable=not (c.progress and trainer.env.is_main),
        dynamic_ncols=True,
        mininterval=1.0,
        desc=f"train {'+'.join(trainer.model.tasks)}",
    )
    try:
        yield bar
    finally:
        bar.close()
