"""Non-finite steps: counted on the host where the step read its losses, on the device otherwise.

Either way the step is skipped exactly (:mod:`.skip`). A balancer that reads host values already
paid the sync, so its skips are counted at once (:meth:`NonFiniteWatch.skipped`); on the
sync-free step the counts, and the first bad step's values, stay on the device until
:meth:`NonFiniteWatch.check` reads them back at a log step.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..errors import NonFiniteLossError


def describe(tasks: list[str], values: list[float], what: str = "loss") -> str:
    return ", ".join(f"task '{t}' {what}={v}" for t, v in zip(tasks, values, strict=True) if not math.isfinite(v))


def too_many(step: int, described: str, in_a_row: int, what: str = "loss") -> NonFiniteLossError:
    return NonFiniteLossError(
        f"non-finite {what} at step {step}: {described} ({in_a_row} step(s) in a row). Lower the learning "
        "rate, enable clip_grad_norm, check that task's labels, or raise max_nonfinite_steps to skip such steps."
    )


class NonFiniteWatch:
    """Counts skipped steps; raises once more than ``limit`` came in a row.

    The host path reports each exact skip as it happens (:meth:`skipped`, then :meth:`stepped`).
    The sync-free path hands over each step's device loss row (:meth:`observe`, no work on the
    device); :meth:`check` reads the rows since the last log step back at once, warns about the
    skipped steps and raises where a run of them went past ``limit``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = self.total = 0
        self.pending: list[tuple[int, list[str], Tensor]] = []  # (step, tasks, loss row) not read back yet

    def skipped(self, step: int, bad: dict[str, float], what: str = "loss") -> dict[str, int]:
        """Count an exactly skipped step (host path); raise past ``limit`` in a row, else warn."""
        self.in_a_row += 1
        self.total += 1
        described = describe(list(bad), list(bad.values()), what)
        if self.in_a_row > self.limit:
            raise too_many(step, described, self.in_a_row, what)
        warnings.warn(f"skipping step {step}: {described}", RuntimeWarning, stacklevel=3)
        return {"skipped_nonfinite": self.count()}

    def stepped(self) -> None:
        """An optimizer step was taken (host path): the run of skipped steps is over."""
        self.in_a_row = 0

    def observe(self, step: int, tasks: list[str], row: Tensor) -> None:
        """The sync-free step's losses, on the device; read back at the next :meth:`check`."""
        self.pending.append((step, tasks, row))

    def count(self) -> int:
        """Skipped steps so far (reads the pending rows back: checkpoints and the summary only)."""
        self.check()
        return self.total

    def check(self) -> None:
        """Warn about the steps skipped since the last check; raise past ``limit`` in a row (one host sync)."""
        if not self.pending:
            return
        rows = torch.cat([row.double() for _, _, row in self.pending]).tolist()  # host sync: log steps only
        first = over = None
        skipped = offset = 0
        for step, tasks, row in self.pending:
            values = rows[offset : offset + len(row)]
            offset += len(row)
            if all(math.isfinite(v) for v in values):
                self.in_a_row = 0
                continue
            self.in_a_row += 1
            skipped += 1
            first = first or (step, tasks, values)
            if self.in_a_row > self.limit and over is None:
                over = too_many(step, describe(tasks, values), self.in_a_row)
        self.pending, self.total = [], self.total + skipped
        if first is not None:
            warnings.warn(
                f"skipping step {first[0]}: {describe(first[1], first[2])} ({skipped} step(s) with a non-finite "
                "loss since the last log were skipped)",
                RuntimeWarning,
                stacklevel=3,
            )
        if over is not None:
            raise over
