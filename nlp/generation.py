"""The ``generation`` task type: a per-task autoregressive decoder reading the shared encoder.

Each generation task owns a small ``BertGenerationDecoder`` (causal self-attention plus
cross-attention over the encoder's token states ``features["tokens"]`` under their padding mask
``features["mask"]``). The decoder shares the encoder's tokenizer, so its vocabulary is the
encoder's; its word embeddings (tied to the output layer) start random: a copy of a trained
encoder's embeddings, whose norms are large, saturates the tied softmax (initial loss ~20 on
MiniLM) and left the decoders stuck at unigram level in the demo.

The head's forward only passes the encoder memory on: decoding needs the target (teacher
forcing) or a loop (``generate``), both of which the task runs in ``loss`` / ``update_metrics``
/ ``postprocess``. Targets are token ids ``(B, T)`` (``[CLS] ... [SEP]``) padded with ``-100``;
a sample without a target is a row of ``-100`` and is masked like every missing label.
Strings are compared after the tokenizer's own round trip (an uncased tokenizer lowercases and
strips accents: references are normalised the same way, so exact match is attainable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from transformers import BertGenerationConfig, BertGenerationDecoder
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from core.distributed import connected_zero
from core.errors import CheckpointError, ConfigError, DataError
from core.heads import HEADS
from core.task import Task
from core.tasks import TASKS

from .metrics import generation_metric

IGNORE = -100
GENERATION_METRICS = ("chrf", "bleu", "exact_match")


@HEADS.register("decoder")
class DecoderHead(nn.Module):
    """A causal transformer decoder with cross-attention to the encoder's token states.

    Args:
        layers: decoder layers.
        heads: attention heads (must divide the encoder width, which the decoder keeps).
        intermediate: width of each layer's feed-forward block.
        dropout: dropout inside the decoder.
        max_positions: longest target (in tokens) the position table holds.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        layers: int = 2,
        heads: int = 4,
        intermediate: int = 768,
        dropout: float = 0.1,
        max_positions: int = 128,
    ) -> None:
        super().__init__()
        if in_dim % heads:
            raise ConfigError(f"decoder heads={heads} must divide the encoder width {in_dim}")
        config = BertGenerationConfig(
            vocab_size=out_dim,
            hidden_size=in_dim,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=max_positions,
            is_decoder=True,
            add_cross_attention=True,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=True,  # output layer = word embeddings: half the parameters
        )
        self.decoder = BertGenerationDecoder(config)
        self.max_positions = max_positions

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"memory": features["tokens"], "mask": features["mask"]}

    def logits(self, memory: Tensor, mask: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: (logits for positions 1.., their labels with -100 on padding)."""
        config = self.decoder.config
        inputs = target[:, :-1]
        out = self.decoder(
            input_ids=inputs.masked_fill(inputs < 0, config.pad_token_id),
            attention_mask=(inputs >= 0).long(),
            encoder_hidden_states=memory,
            encoder_attention_mask=mask,
            use_cache=False,
        )
        return out.logits, target[:, 1:]

    @torch.no_grad()
    def generate(self, memory: Tensor, mask: Tensor, max_new_tokens: int, num_beams: int) -> Tensor:
        """Greedy (``num_beams=1``) or beam search through transformers' ``generate``."""
        config = self.decoder.config
        start = torch.full((memory.shape[0], 1), config.bos_token_id, dtype=torch.long, device=memory.device)
        return self.decoder.generate(
            input_ids=start,
            encoder_hidden_states=memory,
            encoder_attention_mask=mask,
            max_new_tokens=min(max_new_tokens, self.max_positions - 1),
            num_beams=num_beams,
            do_sample=False,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            # the decoder's default self-attention-only cache breaks cross-attention (transformers 5)
            past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )


class GenerationTask(Task):
    """Text out: teacher-forced cross-entropy over target tokens, scored on generated strings."""

    backbone: Any = None  # holds the tokenizer (set after load_extra), for ids -> strings
    max_new_tokens: int = 32
    num_beams: int = 1

    def labelled(self, output: dict[str, Tensor], target: Tensor) -> tuple[dict[str, Tensor], Tensor, int]:
        rows = target[:, 0] >= 0 if target.shape[1] else target.new_zeros(len(target), dtype=torch.bool)
        return {k: v[rows] for k, v in output.items()}, target[rows], int(rows.sum())

    def masked_loss(self, output: dict[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder runs on the labelled rows only: selecting them reads their count (one host sync)."""
        output, target, count = self.labelled(output, target)
        if count == 0:  # a zero whose graph reaches the outputs, so every rank runs the same backward
            return connected_zero(output), target.new_zeros(())
        return self._loss(output, target) * count, target.new_tensor(count)

    def validate_target(self, target: Tensor) -> None:
        vocab = self.head.decoder.config.vocab_size
        bad = target >= vocab
        if bool(bad.any()):
            raise DataError(
                f"task '{self.name}': target token id {int(target[bad][0])} is out of range for the decoder's "
                f"{vocab} tokens; the data and the model use different tokenizers"
            )

    def _loss(self, output: dict[str, Tensor], target: Tensor) -> Tensor:
        logits, labels = self.head.logits(output["memory"], output["mask"], target)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)

    def decode(self, ids: Tensor) -> list[str]:
        tokenizer = getattr(self.backbone, "tokenizer", None)
        if tokenizer is None:
            raise CheckpointError(
                f"task '{self.name}' needs the encoder's tokenizer to turn ids into text; load the model with "
                "JointModel.from_pretrained(model_dir)"
            )
        rows = [[int(i) for i in row if i >= 0] for row in ids.tolist()]
        return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def generate(self, output: dict[str, Tensor]) -> list[str]:
        ids = self.head.generate(output["memory"], output["mask"], self.max_new_tokens, self.num_beams)
        return self.decode(ids[:, 1:])

    def update_metrics(self, metrics: Mapping[str, Metric], output: Any, target: Tensor) -> None:
        output, target, count = self.labelled(output, target)
        if count:
            predicted, references = self.generate(output), self.decode(target)
            for metric in metrics.values():
                metric.update(predicted, [[r] for r in references])

    def postprocess(self, output: dict[str, Tensor]) -> list[Any]:
        return [{"text": text} for text in self.generate(output)]


@TASKS.register("generation")
def generation(
    name: str,
    backbone: nn.Module,
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    head: dict[str, Any] | None = None,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    metrics: Sequence[str] = GENERATION_METRICS,
    label_key: str | None = None,
    weight: float = 1.0,
) -> Task:
    """Text-to-text on the shared encoder (the data supplies the vocabulary and special ids).

    ``head`` overrides the decoder's size (``{layers, heads, intermediate, dropout, max_positions}``);
    ``max_new_tokens`` / ``num_beams`` set decoding (1 = greedy); metrics: chrF, BLEU (sacreBLEU
    13a), exact match.
    """
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown or not metrics:
        raise ConfigError(f"task '{name}': unknown metrics {unknown}; valid: {', '.join(GENERATION_METRICS)}")
    if num_beams < 1 or max_new_tokens < 1:
        raise ConfigError(f"task '{name}': num_beams and max_new_tokens must be >= 1")
    head_spec = {"name": "decoder", **(head or {})}
    module = HEADS.build(
        head_spec,
        in_dim=backbone.out_dim,
        out_dim=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    spec = {
        "type": "generation",
        "vocab_size": vocab_size,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "head": head or {},
        "max_new_tokens": max_new_tokens,
        "num_beams": num_beams,
        "metrics": list(metrics),
        "label_key": label_key or name,
        "weight": weight,
    }
    task = GenerationTask(
        name=name,
        head=module,
        loss_fn=lambda output, target: task._loss(output, target),
        metrics={m: generation_metric(m) for m in metrics},
        label_key=label_key or name,
        weight=weight,
        spec=spec,
    )
    task.backbone, task.max_new_tokens, task.num_beams = backbone, max_new_tokens, num_beams
    return task
