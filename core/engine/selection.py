"""Model selection on validation: the monitored score, the best results so far, early stopping's patience."""

from __future__ import annotations

from typing import Any

from ..evaluation import Results, Senses, monitored_value


class Selection:
    """``reference``: per-task metrics that the score measures relative change against (the config's
    ``baselines``); by default the first validation result. ``senses``: ``metric_senses(model)``."""

    def __init__(self, monitor: str, senses: Senses, patience: int, reference: Results | None = None) -> None:
        self.monitor, self.senses, self.patience, self.reference = monitor, senses, patience, reference
        self.best_val: Results = {}
        self.evals_without_improvement = 0

    def score(self, results: Results) -> float:
        """The monitored value (higher is better)."""
        self.reference = self.reference or results
        return monitored_value(results, self.monitor, self.reference, self.senses)

    def judged(self, results: Results, score: float | None, improved: bool) -> None:
        """Record a validation: the best results when ``improved``, one more without improvement otherwise."""
        if improved:
            self.best_val, self.evals_without_improvement = results, 0
        elif score is not None:
            self.evals_without_improvement += 1

    def exhausted(self) -> bool:
        """Whether early stopping's patience has run out."""
        return self.evals_without_improvement >= self.patience > 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "best_val": self.best_val,
            "evals_without_improvement": self.evals_without_improvement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference, self.best_val = state["reference"], state["best_val"]
        self.evals_without_improvement = int(state["evals_without_improvement"])
