"""The resumable state of a training run: everything a checkpoint holds to continue exactly."""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from typing import Any

import torch

from ..balancing import Balancer
from ..distributed import DistEnv
from ..errors import CheckpointError
from ..model import JointModel
from ..rundir.checkpoints import CheckpointManager
from .nonfinite import NonFiniteWatch
from .rng import restore_rank_rng, rng_state
from .selection import Selection
from .strategy import Strategy

FORMAT = "jointtrain.trainer/2"


@dataclasses.dataclass
class TrainState:
    """The parts of a trainer whose state a checkpoint holds, as the trainer built them."""

    model: JointModel
    balancer: Balancer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    streams: MutableMapping[str, Any]
    strategy: Strategy
    checkpoints: CheckpointManager
    selection: Selection
    watch: NonFiniteWatch
    env: DistEnv
    seed: int
    run_config: dict[str, Any]

    def model_states(self) -> dict[str, Any]:
        """Model and optimizer state; a collective under FSDP (gathered to rank 0)."""
        optimizer = self.strategy.optimizer_state(self.model, self.balancer, self.optimizer)
        return {"model": self.strategy.model_state(self.model), "optimizer": optimizer}

    def state_dict(
        self, step: int, rank_rngs: list[dict[str, Any]] | None = None, models: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The state at ``step``; ``rank_rngs``: every rank's RNG state (default: this process's only);
        ``models``: :meth:`model_states`, taken on every rank beforehand (default: taken here)."""
        return {
            "format": FORMAT,
            "step": step,
            "tasks": list(self.model.tasks),
            "run_config": self.run_config,
            **(models or self.model_states()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "streams": {name: s.state_dict() for name, s in self.streams.items()},
            "rng": rank_rngs or [rng_state(self.env.device)],
            "checkpoints": self.checkpoints.state_dict(),
            **self.selection.state_dict(),  # reference, best_val, evals_without_improvement
            "nonfinite_total": self.watch.count(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore every part; returns the step to continue from."""
        if state.get("format") != FORMAT:
            raise CheckpointError(f"not a {FORMAT} checkpoint (format {state.get('format')!r})")
        if state["tasks"] != list(self.model.tasks) or set(state["streams"]) != set(self.streams):
            raise CheckpointError(
                f"checkpoint tasks {state['tasks']} / sources {sorted(state['streams'])} differ from "
                f"{list(self.model.tasks)} / {sorted(self.streams)}"
            )
        try:
            self.balancer.load_state_dict(state["balancer"])  # first: the optimizer holds its parameters
            self.strategy.load(self.model, self.balancer, self.optimizer, state)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not match the model built from the config: {e}") from e
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name, s in state["streams"].items():
            self.streams[name].load_state_dict(s)
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older checkpoints: rank 0 only
        restore_rank_rng(rngs, self.env.rank, self.env.device, self.seed, int(state["step"]))
        self.checkpoints.load_state_dict(state["checkpoints"])
        self.selection.load_state_dict(state)
        self.watch.total = int(state["nonfinite_total"])
        return int(state["step"])
