"""The generation task type: masked teacher-forced loss, decoding through generate, joint training."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from core.cli import main as cli
from core.config import load_config
from core.experiments.run import train
from core.model import JointModel
from core.tasks import build_task
from nlp.encoder import HFEncoder
from nlp.label_kinds import generation_updates, target_vocab
from nlp.predict import predict_records

from .conftest import write_jsonl
from .test_train import TAG_NAMES

NAMES, PLACES = ["alice", "bob"], ["paris", "london"]


def _task(encoder: HFEncoder, **kwargs: Any) -> Any:
    spec = {"type": "generation", **generation_updates(encoder.tokenizer), **kwargs}
    return build_task("gen", spec, encoder)


def _features(encoder: HFEncoder, texts: list[str]) -> dict[str, torch.Tensor]:
    return encoder(dict(encoder.tokenizer(texts, padding=True, return_tensors="pt")))


def _targets(encoder: HFEncoder, texts: list[str | None], pad: int = 0) -> torch.Tensor:
    rows = [encoder.tokenizer(t)["input_ids"] if t else [] for t in texts]
    width = max(len(r) for r in rows) + pad
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows])


def test_loss_ignores_padding_and_rows_without_target(tiny_encoder: str) -> None:
    encoder = HFEncoder(tiny_encoder).eval()
    task = _task(encoder, head={"dropout": 0.0})
    output = task.head(_features(encoder, ["alice went to paris", "bob loves london !"]))
    target = _targets(encoder, ["alice paris", "bob"])
    loss = task.loss(output, target)
    torch.testing.assert_close(task.loss(output, _targets(encoder, ["alice paris", "bob"], pad=3)), loss)
    partial = task.loss(output, _targets(encoder, ["alice paris", None]))
    alone = task.loss({k: v[:1] for k, v in output.items()}, _targets(encoder, ["alice paris"]))
    torch.testing.assert_close(partial, alone)
    assert task.labelled(output, _targets(encoder, [None, "bob"]))[2] == 1
    assert task.loss(output, _targets(encoder, [None, None])) is None
    assert loss.requires_grad and float(loss) > 0


def test_spec_keeps_the_vocabulary_count_and_old_saved_specs_rebuild(tiny_encoder: str) -> None:
    """``task_type`` records the spec: the target ids stay out of it (the weights hold them), their
    count goes in; the spec a saved model wrote by hand before rebuilds the task and is written back."""
    encoder = HFEncoder(tiny_encoder)
    vocab = target_vocab(encoder.tokenizer, [encoder.tokenizer("alice paris")["input_ids"]])
    task = _task(encoder, vocab=vocab, max_new_tokens=6)
    updates = generation_updates(encoder.tokenizer)
    old = {
        **{k: v for k, v in updates.items() if k != "type"},
        "type": "generation",
        "target_vocab_size": len(vocab),
        "head": {},
        "max_new_tokens": 6,
        "num_beams": 1,
        "metrics": ["chrf", "bleu", "exact_match"],
        "label_key": "gen",
        "weight": 1.0,
    }
    assert "vocab" not in task.spec and task.spec == {**old, "label_key": None}
    rebuilt = build_task("gen", old, encoder)
    assert rebuilt.spec == old and len(rebuilt.head.decoder.vocab) == len(vocab)
    assert rebuilt.backbone is encoder and rebuilt.loss_fn == rebuilt.head.loss


@pytest.mark.parametrize("copy", [False, True])
def test_greedy_generate_matches_argmax_of_the_teacher_forced_scores(tiny_encoder: str, copy: bool) -> None:
    torch.manual_seed(0)
    encoder = HFEncoder(tiny_encoder).eval()
    tokenizer = encoder.tokenizer
    vocab = target_vocab(tokenizer, [tokenizer("alice paris london")["input_ids"]])
    task = _task(encoder, max_new_tokens=6, vocab=vocab, head={"copy": copy})
    task.head.eval()  # no dropout: both passes see the same network
    output = task.head(_features(encoder, ["alice went to paris", "bob"]))
    ids = task.head.generate(output, 6, num_beams=1)
    assert ids.shape[0] == 2 and (ids[:, 0] == task.spec["bos_token_id"]).all()
    writable = set(vocab) | (set(output["ids"].flatten().tolist()) if copy else set())
    assert set(ids.flatten().tolist()) <= writable  # the target vocabulary, and copies of input tokens
    for row in range(2):  # each generated token is the argmax given the tokens before it
        prefix = ids[row : row + 1]
        one = {k: v[row : row + 1] for k, v in output.items()}
        scores = task.head.scores(one, prefix)
        steps = prefix.shape[1] - 1
        eos = task.spec["eos_token_id"]
        stop = next((i for i in range(1, steps + 1) if prefix[0, i] == eos), steps)
        assert torch.equal(scores[0, :stop].argmax(-1), prefix[0, 1 : stop + 1])
        torch.testing.assert_close(scores.exp().sum(-1), torch.ones(scores.shape[:2]))  # a distribution
    beams = task.head.generate(output, 6, num_beams=3)
    assert beams.shape[0] == 2
    assert all(isinstance(r["text"], str) for r in task.postprocess(output))


def test_the_loss_is_the_teacher_forced_scores_negative_log_likelihood(tiny_encoder: str) -> None:
    """The cheap loss (no full-vocabulary tensor) equals the NLL under what generate ranks."""
    torch.manual_seed(0)
    encoder = HFEncoder(tiny_encoder).eval()
    tokenizer = encoder.tokenizer
    vocab = target_vocab(tokenizer, [tokenizer("alice paris")["input_ids"]])
    for copy in (False, True):
        task = _task(encoder, vocab=vocab, head={"copy": copy, "dropout": 0.0})
        output = task.head(_features(encoder, ["alice went to paris", "bob loves london"]))
        # in vocabulary: both decoders score it alike; "london" is outside it, in the second input:
        # the pointer-generator writes it only by copying (no share of [UNK]'s softmax mass)
        for texts in (["alice paris", "paris"], ["alice paris", "london"]) if copy else (["alice paris", "paris"],):
            target = _targets(encoder, texts)
            scores = task.head.scores(output, target[:, :-1])
            labels = target[:, 1:].flatten()
            expected = torch.nn.functional.nll_loss(scores.flatten(0, 1), labels, ignore_index=-100, reduction="sum")
            total, count = task.head.loss(output, target)
            torch.testing.assert_close(total, expected)
            assert int(count) == int((labels >= 0).sum())
        london = tokenizer.convert_tokens_to_ids("london")  # outside the vocabulary: only a copy writes it
        start = torch.full((2, 1), task.spec["bos_token_id"])
        assert (task.head.scores(output, start)[1, 0, london].exp() > 0) == copy


@pytest.mark.parametrize("copy", [False, True])
def test_the_loss_is_a_token_sum_that_adds_up_across_row_splits(tiny_encoder: str, copy: bool) -> None:
    """(sum, count) over target tokens: two halves of a batch add up to the whole batch's token mean
    (a row mean weighted by rows would not: the rows hold 3, 2 and 5 target tokens, [SEP] included)."""
    torch.manual_seed(0)
    encoder = HFEncoder(tiny_encoder).eval()
    task = _task(encoder, head={"copy": copy, "dropout": 0.0})
    texts = ["alice went to paris", "bob loves london", "the movie was great", "bob"]
    output = task.head(_features(encoder, texts))
    target = _targets(encoder, ["alice paris", "bob", None, "the movie was great"])
    total, count = task.masked_loss(output, target)
    assert int(count) == task.count_labelled(target) == 3 + 2 + 5
    halves = [
        task.masked_loss({k: v[part] for k, v in output.items()}, target[part]) for part in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(sum(t for t, _ in halves), total)
    assert sum(int(c) for _, c in halves) == int(count)
    torch.testing.assert_close(task.loss(output, target), sum(t for t, _ in halves) / sum(c for _, c in halves))


def make_sources(root: Path, n: int = 32, shared: bool = False) -> dict[str, Any]:
    """Sentiment, NER and two generation tasks (the person named; the place, upper-cased) on short texts."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        person, place = rng.choice(NAMES), rng.choice(PLACES)
        good = i % 2 == 0
        rows.append(
            {
                "id": f"x{i}",
                "tokens": [person, "went", "to", place, "!"],
                "text": f"{person} went to {place} !",
                "tags": ["B-person", "O", "O", "B-geo-loc", "O"],
                "label": "pos" if good else "neg",
                "who": person if i % 4 else None,  # some samples carry no target
                "where": f"{place} {place}",
            }
        )

    def source(name: str, labels: dict[str, Any], **extra: Any) -> dict[str, Any]:
        files = {s: write_jsonl(root / name / f"{s}.jsonl", rows) for s in ("train", "validation", "test")}
        return {"path": "json", "data_files": files, "id": "id", "labels": labels, **extra}

    gen = {"who": {"column": "who", "kind": "generation"}, "where": {"column": "where", "kind": "generation"}}
    ner = {"ner": {"column": "tags", "kind": "token", "names": TAG_NAMES}}
    if shared:
        return {"all": source("all", {**ner, **gen}, tokens="tokens")}
    return {
        "tweets": source("tweets", ner, tokens="tokens"),
        "reviews": source("reviews", {"sentiment": "label"}),
        **{t: source(t, {t: spec}) for t, spec in gen.items()},
    }


def _config(encoder: str, sources: dict[str, Any], out: Path, **over: Any) -> Any:
    tasks = {t: {} for s in sources.values() for t in s["labels"]}
    raw: dict[str, Any] = {
        "output_dir": str(out),
        "model": {"backbone": {"name": "hf_encoder", "model": encoder}},
        "tasks": {t: ({"type": "generation", "max_new_tokens": 6} if t in ("who", "where") else {}) for t in tasks},
        "data": {"name": "text", "sources": sources, "tokenizer": encoder, "max_length": 16},
        "loading": {"batch_size": 8},
        "train": {"max_steps": 4, "lr": 1e-3, "eval_every": 0, "progress": False},
        "report": {"enabled": False},
        **over,
    }
    for task in ("sentiment",):
        if task in raw["tasks"]:
            raw["tasks"][task] = {"type": "sequence_classification"}
    if "ner" in raw["tasks"]:
        raw["tasks"]["ner"] = {"type": "token_classification"}
    return load_config(raw=raw)


@pytest.mark.parametrize(
    ("shared", "balancing"),
    [(False, {"name": "uw"}), (True, {"name": "upgrad", "space": "rep"}), (True, {"name": "mgda", "space": "params"})],
)
def test_joint_training_with_classification_and_token_tasks(
    tiny_encoder: str, tmp_path: Path, shared: bool, balancing: dict[str, Any]
) -> None:
    sources = make_sources(tmp_path / "data", shared=shared)
    report = train(_config(tiny_encoder, sources, tmp_path / "run", balancing=balancing))
    for task in ("who", "where"):
        assert set(report["tasks"][task]) >= {"chrf", "bleu", "exact_match"}
        assert all(0.0 <= v <= 1.0 for k, v in report["tasks"][task].items() if k != "loss")
    assert "entity_f1" in report["tasks"]["ner"]


def test_generation_learns_saves_and_predicts(tiny_encoder: str, tmp_path: Path) -> None:
    """Enough steps for the tiny model to name the person; the saved model generates the same text."""
    sources = make_sources(tmp_path / "data", n=48)
    sources = {"who": sources["who"]}
    config = _config(tiny_encoder, sources, tmp_path / "run")
    config.train.max_steps, config.train.lr = 120, 3e-3
    report = train(config)
    assert report["tasks"]["who"]["exact_match"] > 0.9
    model = JointModel.from_pretrained(tmp_path / "run" / "best")
    records = [{"text": "bob went to london !"}, {"text": "alice went to paris !"}]
    assert [r["who"]["text"] for r in predict_records(model, records)] == ["bob", "alice"]
    (tmp_path / "in.txt").write_text("bob went to london !\n")
    assert cli(["predict", str(tmp_path / "run"), str(tmp_path / "in.txt"), "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["predictions"][0]["who"] == {"text": "bob"}
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert "| who | generation | - |" in card
