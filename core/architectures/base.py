"""The architecture contract: how a backbone's layers are shared among the tasks.

``JointModel.encode`` calls :meth:`Architecture.encode` once per input batch and
``JointModel.decode`` calls :meth:`Architecture.decode`, which returns each task's features for
its head. The backbone is passed in, not owned, so hard sharing adds no weights and saved models
keep their ``backbone.*`` names.

Two facts about an architecture matter to gradient-space balancing:

- :meth:`task_parameters`: the parameters that reach only that task; every other parameter of the
  model (backbone, and the architecture's remaining ones) reaches two tasks or more and is shared.
- :attr:`shared_representation`: True when ``encode`` returns tensors that every task reads, with
  only shared parameters upstream of them and only task parameters downstream. Then the gradient
  engine's ``rep`` space is exact; otherwise only ``params`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from ..backbones import BlockBackbone
from ..errors import ConfigError


class Architecture(nn.Module):
    """Base class; subclasses register in ``ARCHITECTURES`` and describe themselves in :meth:`spec`."""

    shared_representation: ClassVar[bool] = True

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("an architecture needs at least one task")
        self.tasks = list(tasks)

    def encode(self, backbone: nn.Module, inputs: Any) -> Any:
        """The shared computation of one input batch (what ``rep`` differentiates against)."""
        raise NotImplementedError

    def decode(self, features: Any, tasks: Sequence[str]) -> dict[str, Any]:
        """Each asked task's head input, from what :meth:`encode` returned."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """This architecture's parameters that reach ``task`` only (heads are the model's)."""
        return []

    def spec(self) -> dict[str, Any]:
        """``{name, **kwargs}`` that rebuilds this architecture (saved in the model's config.json)."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Scalars about the last forward pass for the training log (gate statistics...)."""
        return {}

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (relative to the architecture) that weight decay must not pull to 0."""
        return set()

    def adapt_state(self, state: dict[str, Tensor], saved_tasks: Sequence[str]) -> dict[str, Tensor]:
        """Saved weights (keys relative to this module) of a model trained on ``saved_tasks`` ->
        weights of this architecture, built for a subset of them. Default: drop the weights of
        modules that were not built (branches or gates only dropped tasks used)."""
        own = self.state_dict()
        return {k: v for k, v in state.items() if k in own}

    def check_task(self, task: str, tasks: Sequence[str], where: str) -> None:
        if task not in tasks:
            raise ConfigError(f"{where} names task '{task}', which the model does not have; tasks: {', '.join(tasks)}")


def require_blocks(backbone: nn.Module, architecture: str) -> BlockBackbone:
    """The backbone as a :class:`~core.backbones.BlockBackbone`, or a ConfigError saying which do."""
    if not isinstance(backbone, BlockBackbone):
        raise ConfigError(
            f"architecture '{architecture}' needs a backbone exposing its blocks (core.backbones.BlockBackbone: "
            "num_blocks, block_dims, stem, block, finish, drop_blocks, single_tensor_state); "
            f"{type(backbone).__name__} does not. "
            "Use 'hard' or an expert architecture (mmoe, cgc, ple, dselect_k) with it."
        )
    return backbone


def vector_features(features: Any, architecture: str) -> Tensor:
    """Expert architectures mix vectors: the backbone output must be a [batch, dim] tensor."""
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ConfigError(
            f"architecture '{architecture}' mixes feature vectors, but the backbone returned {shape}; "
            "use a backbone (or pooling) that returns [batch, dim] features"
        )
    return features
