"""The ``generation`` task type: a per-task autoregressive decoder reading the shared encoder.

Each generation task owns a small ``BertGenerationDecoder`` (causal self-attention plus
cross-attention over the encoder's token states ``features["tokens"]`` under their padding mask
``features["mask"]``). It shares the encoder's tokenizer but writes only a target vocabulary (the
ids of the training targets, and the special tokens), and with ``copy`` it can also point at input
tokens (``features["ids"]``). Its word embeddings (tied to the output layer) start random: a copy
of a trained encoder's embeddings, whose norms are large, saturates the tied softmax (initial loss
~20 on MiniLM) and left the decoders stuck at unigram level in the demo.

The head's forward only passes the encoder memory on: decoding needs the target (teacher
forcing) or a loop (``generate``), both of which the task runs in ``loss`` / ``update_metrics``
/ ``postprocess``. Targets are token ids ``(B, T)`` (``[CLS] ... [SEP]``) padded with ``-100``;
a sample without a target is a row of ``-100`` and is masked like every missing label.
Strings are compared after the tokenizer's own round trip (an uncased tokenizer lowercases and
strips accents: references are normalised the same way, so exact match is attainable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertGenerationConfig, BertGenerationDecoder
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions, CausalLMOutputWithCrossAttentions

from core.errors import CheckpointError, ConfigError
from core.heads import HEADS
from core.task import Task, labelled_loss
from core.tasks import task_type

from .label_kinds import IGNORE
from .metrics import generation_metric

GENERATION_METRICS = ("chrf", "bleu", "exact_match")


class TokenizerBackbone(Protocol):
    """An encoder that carries its tokenizer (``nlp.encoder.HFEncoder``; None until it is loaded)."""

    tokenizer: Any


class PointerDecoder(BertGenerationDecoder):
    """``BertGenerationDecoder`` over a target vocabulary, optionally mixing in copies of input tokens.

    Its inputs and outputs are tokenizer ids, so transformers' ``generate`` (greedy, beam, caches)
    runs on it unchanged; inside, the embeddings and the softmax cover only ``vocab``, the ids the
    training targets use (a number decoder needs 38-78 of MiniLM's 30,522: an output layer
    400-800x smaller, and no probability mass to unlearn on the rest). Ids outside it read as
    ``[UNK]``, and without copy they also score as ``[UNK]`` (the decoder learns to write it). With
    ``config.copy`` (See et al., 2017, "Get To The Point"), a gate mixes that softmax with an
    attention over the input tokens, whose mass goes to their ids: a name never seen in a training
    target can still be written by pointing at it, and an id outside the vocabulary scores only its
    copy mass (as in ``scores``, what ``generate`` ranks).
    """

    def __init__(self, config: BertGenerationConfig, vocab: Tensor) -> None:
        super().__init__(config)
        self.register_buffer("vocab", vocab.long(), persistent=True)  # local id -> tokenizer id
        if config.copy:
            self.copy_query = nn.Linear(config.hidden_size, config.hidden_size)
            self.copy_gate = nn.Linear(config.hidden_size, 1)
            self.post_init()  # HF's init (std 0.02) for these too: the pointer starts near uniform

    def local(self, ids: Tensor) -> Tensor:
        """Tokenizer ids -> target-vocabulary ids (``[UNK]`` outside it; -100 stays -100)."""
        table = torch.full((self.config.tokenizer_size,), -1, device=ids.device)
        table[self.vocab] = torch.arange(len(self.vocab), device=ids.device)
        if self.config.tokenizer_unk_id is not None:  # from the buffer: a loaded model's ids come with its weights
            table = table.masked_fill(table < 0, table[self.config.tokenizer_unk_id])
        return torch.where(ids < 0, ids, table[ids.clamp(min=0)])

    def hidden(self, input_ids: Tensor, **kwargs: Any) -> BaseModelOutputWithPastAndCrossAttentions:
        return self.bert(self.local(input_ids), return_dict=True, **kwargs)

    def mix(self, hidden: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(vocabulary probabilities (B, T, V), copy attention (B, T, S), gate (B, T, 1))."""
        vocab = self.lm_head(hidden).float().softmax(-1)
        scores = self.copy_query(hidden) @ memory.transpose(1, 2) / memory.shape[-1] ** 0.5
        attention = scores.float().masked_fill(~mask.bool()[:, None, :], float("-inf")).softmax(-1)
        return vocab, attention, torch.sigmoid(self.copy_gate(hidden).float())

    def scores(self, hidden: Tensor, memory: Tensor, mask: Tensor, source_ids: Tensor) -> Tensor:
        """Log-probabilities over every tokenizer id (what ``generate`` ranks)."""
        shape = (*hidden.shape[:2], self.config.tokenizer_size)
        index = self.vocab.expand(*hidden.shape[:2], -1)
        if not self.config.copy:
            scores = self.lm_head(hidden).float().log_softmax(-1)
            return scores.new_full(shape, torch.finfo(torch.float32).min).scatter(-1, index, scores)
        vocab, attention, gate = self.mix(hidden, memory, mask)
        probs = hidden.new_zeros(shape, dtype=torch.float32).scatter_add(-1, index, gate * vocab)
        sources = source_ids[:, None, :].expand(-1, hidden.shape[1], -1)
        return probs.scatter_add(-1, sources, (1 - gate) * attention).clamp(min=1e-12).log()

    def nll(self, hidden: Tensor, memory: Tensor, mask: Tensor, source_ids: Tensor, labels: Tensor) -> Tensor:
        """Summed negative log-likelihood of the labels (tokenizer ids, -100 ignored) under the distribution
        ``scores`` gives (with copy), without a full-vocab tensor."""
        local = self.local(labels)
        if not self.config.copy:
            logits = self.lm_head(hidden).float()
            return F.cross_entropy(logits.flatten(0, 1), local.flatten(), ignore_index=IGNORE, reduction="sum")
        vocab, attention, gate = self.mix(hidden, memory, mask)
        keep = labels >= 0
        index = local.clamp(min=0)
        # an id outside the vocabulary reads as [UNK] but gets none of [UNK]'s softmax mass: only copies write it
        written = self.vocab[index] == labels
        from_vocab = vocab.gather(-1, index[..., None])[..., 0] * written
        copies = (attention * (source_ids[:, None, :] == labels[..., None])).sum(-1)
        p = gate[..., 0] * from_vocab + (1 - gate[..., 0]) * copies
        return -(p.clamp(min=1e-12).log() * keep).sum()

    def forward(  # the signature generate fills: tokenizer ids in, log-probabilities over them out
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        source_ids: Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithCrossAttentions:
        kwargs.pop("return_dict", None)
        out = self.hidden(
            input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.scores(out.last_hidden_state, encoder_hidden_states, encoder_attention_mask, source_ids)
        return CausalLMOutputWithCrossAttentions(logits=logits, cache=out.cache)


@HEADS.register("decoder")
class DecoderHead(nn.Module):
    """A causal transformer decoder with cross-attention to the encoder's token states.

    Args:
        layers: decoder layers.
        heads: attention heads (must divide the encoder width, which the decoder keeps).
        intermediate: width of each layer's feed-forward block.
        dropout: dropout inside the decoder.
        max_positions: longest target (in tokens) the position table holds.
        copy: mix the output softmax with a pointer to the input tokens (extraction, names, numbers
            written as they are); off, the decoder writes from its target vocabulary only.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        unk_token_id: int | None = None,
        vocab: Sequence[int] | int | None = None,
        layers: int = 2,
        heads: int = 4,
        intermediate: int = 768,
        dropout: float = 0.1,
        max_positions: int = 128,
        copy: bool = False,
    ) -> None:
        super().__init__()
        if in_dim % heads:
            raise ConfigError(f"decoder heads={heads} must divide the encoder width {in_dim}")
        if vocab is None or isinstance(vocab, int):  # a count: the ids are loaded with the weights
            ids = torch.arange(out_dim if vocab is None else vocab)
        else:
            ids = torch.tensor(list(vocab))
            if len(ids) < out_dim and unk_token_id not in vocab:
                raise ConfigError("a decoder with a target vocabulary needs the tokenizer's [UNK] id in it")
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        config = BertGenerationConfig(  # special ids stay out: they are tokenizer ids, the embeddings local ones
            vocab_size=len(ids),
            hidden_size=in_dim,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=max_positions,
            is_decoder=True,
            add_cross_attention=True,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            tie_word_embeddings=True,  # output layer = word embeddings: half the parameters
            tokenizer_size=out_dim,
            tokenizer_unk_id=unk_token_id,
            copy=copy,
        )
        self.decoder = PointerDecoder(config, ids)
        self.max_positions = max_positions

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"memory": features["tokens"], "mask": features["mask"], "ids": features["ids"]}

    def _hidden(self, output: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        return self.decoder.hidden(
            inputs.masked_fill(inputs < 0, self.pad_token_id),
            attention_mask=(inputs >= 0).long(),
            encoder_hidden_states=output["memory"],
            encoder_attention_mask=output["mask"],
            use_cache=False,
        ).last_hidden_state

    def loss(self, output: Mapping[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: (the summed token negative log-likelihood of ``target[:, 1:]``, its token
        count), padding ignored: sums add up across rows, micro-batches and ranks."""
        hidden = self._hidden(output, target[:, :-1])
        labels = target[:, 1:]
        total = self.decoder.nll(hidden, output["memory"], output["mask"], output["ids"], labels)
        return total, (labels >= 0).sum()

    def scores(self, output: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        """Log-probabilities over tokenizer ids of the token after each of ``inputs`` (teacher forcing)."""
        return self.decoder.scores(self._hidden(output, inputs), output["memory"], output["mask"], output["ids"])

    @torch.no_grad()
    def generate(self, output: Mapping[str, Tensor], max_new_tokens: int, num_beams: int) -> Tensor:
        """Greedy (``num_beams=1``) or beam search through transformers' ``generate``."""
        memory = output["memory"]
        start = torch.full((memory.shape[0], 1), self.bos_token_id, dtype=torch.long, device=memory.device)
        return self.decoder.generate(
            input_ids=start,
            encoder_hidden_states=memory,
            encoder_attention_mask=output["mask"],
            source_ids=output["ids"],
            max_new_tokens=min(max_new_tokens, self.max_positions - 1),
            num_beams=num_beams,
            do_sample=False,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            # the decoder's default self-attention-only cache breaks cross-attention (transformers 5)
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )


@dataclass
class GenerationTask(Task):
    """Text out: teacher-forced cross-entropy over target tokens, scored on generated strings.

    ``loss_fn`` is the decoder head's teacher-forced ``(summed token NLL, token count)``; the
    encoder (``backbone``) holds the tokenizer that turns ids into text (a loaded model gets it
    from its folder after the task is built, so it is read when decoding)."""

    backbone: TokenizerBackbone | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def _rows(target: Tensor) -> Tensor:
        """Which rows carry a target (a row of -100, or no column at all, is a missing label)."""
        return target[:, 0] >= 0 if target.shape[1] else target.new_zeros(len(target), dtype=torch.bool)

    def labelled(self, output: dict[str, Tensor], target: Tensor) -> tuple[dict[str, Tensor], Tensor, int]:
        rows = self._rows(target)
        return {k: v[rows] for k, v in output.items()}, target[rows], int(rows.sum())

    def count_labelled(self, target: Tensor) -> int:
        return int((target[:, 1:] >= 0)[self._rows(target)].sum())

    def select(self, output: dict[str, Tensor], target: Tensor, index: Tensor) -> tuple[Any, Any]:
        return {k: v.index_select(0, index) for k, v in output.items()}, target.index_select(0, index)

    def masked_loss(self, output: dict[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """(summed token NLL, target token count) over the labelled rows: a token-level mean whatever
        the split into rows, micro-batches or ranks. The decoder runs on the labelled rows only:
        selecting them reads their count (one host sync)."""
        return labelled_loss(self.labelled(output, target), lambda output, target, _: self.loss_fn(output, target))

    def validate_target(self, target: Tensor) -> None:
        vocab = self.head.decoder.config.tokenizer_size
        self.check_range(
            target,
            vocab,
            "target token id",
            f"the decoder's {vocab} tokens",
            "the data and the model use different tokenizers",
        )

    def decode(self, ids: Tensor) -> list[str]:
        tokenizer = self.backbone.tokenizer if self.backbone is not None else None
        if tokenizer is None:
            raise CheckpointError(
                f"task '{self.name}' needs the encoder's tokenizer to turn ids into text; load the model with "
                "JointModel.from_pretrained(model_dir)"
            )
        rows = [[int(i) for i in row if i >= 0] for row in ids.tolist()]
        return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def generate(self, output: dict[str, Tensor]) -> list[str]:
        ids = self.head.generate(output, self.spec["max_new_tokens"], self.spec["num_beams"])
        return self.decode(ids[:, 1:])

    def metric_inputs(self, output: dict[str, Tensor], target: Tensor) -> tuple[list[str], list[list[str]]]:
        return self.generate(output), [[r] for r in self.decode(target)]

    def postprocess(self, output: dict[str, Tensor]) -> list[Any]:
        return [{"text": text} for text in self.generate(output)]


@task_type("generation", GenerationTask, in_weights=("vocab",))
def generation(
    name: str,
    backbone: nn.Module,
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    unk_token_id: int | None = None,
    vocab: Sequence[int] | None = None,
    target_vocab_size: int | None = None,
    head: dict[str, Any] | None = None,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    metrics: Sequence[str] = GENERATION_METRICS,
    label_key: str | None = None,
    weight: float = 1.0,
) -> Task:
    """Text-to-text on the shared encoder (the data supplies the vocabulary and special ids).

    ``vocab``: the tokenizer ids the decoder writes (the data passes those of the training targets);
    a saved model keeps them in its weights and its config only their count, ``target_vocab_size``.
    ``head`` overrides the decoder (``{layers, heads, intermediate, dropout, max_positions, copy}``);
    ``max_new_tokens`` / ``num_beams`` set decoding (1 = greedy); metrics: chrF, BLEU (sacreBLEU
    13a), exact match.
    """
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown or not metrics:
        raise ConfigError(f"task '{name}': unknown metrics {unknown}; valid: {', '.join(GENERATION_METRICS)}")
    if num_beams < 1 or max_new_tokens < 1:
        raise ConfigError(f"task '{name}': num_beams and max_new_tokens must be >= 1")
    module = HEADS.build(
        {"name": "decoder", **(head or {})},
        in_dim=backbone.out_dim,
        out_dim=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        unk_token_id=unk_token_id,
        vocab=vocab if vocab is not None else target_vocab_size,
    )
    return GenerationTask(
        name=name,
        head=module,
        loss_fn=module.loss,
        metrics={m: generation_metric(m) for m in metrics},
        label_key=label_key or name,
        weight=weight,
        spec={"target_vocab_size": len(module.decoder.vocab), "head": head or {}},
        backbone=backbone,
    )
