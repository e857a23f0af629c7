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
    """``observe`` each step's finiteness on the device; ``check`` at log steps warns about the
    skipped steps and raises once more than ``limit`` came in a row."""

    def __init__(self, tasks: list[str], limit: int, device: torch.device) -> None:
        self.tasks, self.limit = tasks, limit
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.in_a_row, self.total, self.reported = zero.clone(), zero.clone(), 0
        self.first = torch.full((1 + len(tasks),), -1.0, dtype=torch.float64, device=device)  # step, values
        self.over = torch.full((2 + len(tasks),), -1.0, dtype=torch.float64, device=device)  # step, run, values
        self.host_in_a_row = self.host_total = 0  # the exact skips of the host path

    def skipped(self, step: int, bad: dict[str, float], what: str = "loss") -> dict[str, int]:
        """Count an exactly skipped step (host path); raise past ``limit`` in a row, else warn."""
        self.host_in_a_row += 1
        self.host_total += 1
        described = describe(list(bad), list(bad.values()), what)
        if self.host_in_a_row > self.limit:
            raise too_many(step, described, self.host_in_a_row, what)
        warnings.warn(f"skipping step {step}: {described}", RuntimeWarning, stacklevel=3)
        return {"skipped_nonfinite": self.count()}

    def stepped(self) -> None:
        """An optimizer step was taken: the host path's run of skipped steps is over."""
        self.host_in_a_row = 0

    def observe(self, step: int, finite: Tensor, values: dict[str, Tensor]) -> None:
        bad, zero = ~finite, self.total.new_zeros(())
        row = torch.stack([values[t].double() if t in values else zero for t in self.tasks])
        self.in_a_row = torch.where(bad, self.in_a_row + 1, 0.0)
        self.total = self.total + bad.double()
        at = torch.full((1,), float(step), dtype=torch.float64, device=zero.device)
        self.first = torch.where(bad & (self.first[0] < 0), torch.cat([at, row]), self.first)
        crossed = (self.in_a_row > self.limit) & (self.over[0] < 0)
        self.over = torch.where(crossed, torch.cat([at, self.in_a_row[None], row]), self.over)

    def count(self) -> int:
        return self.host_total + int(self.total)  # host sync: checkpoints and the summary only

    def check(self) -> None:
        """Warn about the steps skipped since the last check; raise past ``limit`` in a row (one host sync)."""
        total, first, over = int(self.total), self.first.tolist(), self.over.tolist()  # host sync: log steps only
        if total > self.reported:
            warnings.warn(
                f"skipping step {int(first[0])}: {describe(self.tasks, first[1:])} "
                f"({total - self.reported} step(s) with a non-finite loss since the last log had their "
                "step skipped)",
                RuntimeWarning,
                stacklevel=3,
            )
            self.reported = total
            self.first.fill_(-1.0)
        if over[0] >= 0:
            raise too_many(int(over[0]), describe(self.tasks, over[2:]), int(over[1]))
