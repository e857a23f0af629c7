from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from core.errors import CheckpointError, ConfigError
from nlp.encoder import HFEncoder, load_tokenizer

from .conftest import make_encoder


def _inputs(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_features_and_pooling(tiny_encoder: str, pooling: str) -> None:
    encoder = HFEncoder(tiny_encoder, pooling=pooling).eval()
    inputs = _inputs(encoder.tokenizer, ["a good movie", "bad"])
    features = encoder(inputs)
    assert features["tokens"].shape == (2, inputs["input_ids"].shape[1], 32)
    assert features["pooled"].shape == (2, 32) and encoder.out_dim == 32
    if pooling == "mean":  # padding does not change a text's mean vector
        alone = encoder(_inputs(encoder.tokenizer, ["bad"]))["pooled"][0]
        torch.testing.assert_close(features["pooled"][1], alone, rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(features["pooled"], features["tokens"][:, 0])


def test_freeze_lower_layers(tiny_encoder: str) -> None:
    encoder = HFEncoder(tiny_encoder, freeze_layers=1)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert not any("embeddings" in n or "layer.0." in n for n in trainable)
    assert any("layer.1." in n for n in trainable)
    embeddings_only = HFEncoder(tiny_encoder, freeze_embeddings=True)
    assert {n for n, p in embeddings_only.named_parameters() if not p.requires_grad} == {
        n for n, _ in embeddings_only.named_parameters() if "embeddings" in n
    }
    with pytest.raises(ConfigError, match="freeze_layers must be in"):
        HFEncoder(tiny_encoder, freeze_layers=5)


def test_gradient_checkpointing_switch(tiny_encoder: str) -> None:
    encoder = HFEncoder(tiny_encoder, gradient_checkpointing=True).train()
    assert getattr(encoder.encoder, "is_activation_checkpointing", None) or encoder.encoder.is_gradient_checkpointing
    encoder(_inputs(encoder.tokenizer, ["a good movie"]))["pooled"].sum().backward()


def test_unknown_encoder_or_tokenizer_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load encoder"):
        HFEncoder(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))


def test_tokenizer_of_another_model_is_refused(tiny_encoder: str, tmp_path: Path) -> None:
    bigger = make_encoder(tmp_path / "bigger", extra_words=tuple(f"word{i}" for i in range(10)))
    with pytest.raises(ConfigError, match="tokenizer and encoder come from different models"):
        HFEncoder(tiny_encoder, tokenizer=str(bigger))


def test_export_spec_rebuilds_offline_and_load_checks_the_tokenizer(tiny_encoder: str, tmp_path: Path) -> None:
    encoder = HFEncoder(tiny_encoder)
    spec = encoder.export_spec()
    spec.pop("name")
    rebuilt = HFEncoder(**spec)
    assert rebuilt.tokenizer is None
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in encoder.state_dict().items()
    }
    with pytest.raises(CheckpointError, match="no 'tokenizer/' folder"):
        rebuilt.load_extra(tmp_path)
    make_encoder(tmp_path / "other", extra_words=tuple(f"w{i}" for i in range(10)))
    load_tokenizer(str(tmp_path / "other")).save_pretrained(str(tmp_path / "tokenizer"))
    with pytest.raises(CheckpointError, match="different models"):
        rebuilt.load_extra(tmp_path)
