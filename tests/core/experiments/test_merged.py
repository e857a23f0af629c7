"""The merged-model baseline end to end: single-task runs, merge, selection on validation, every head served."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.engine.rundir import RunDir
from core.errors import ConfigError
from core.experiments.compare import execute
from core.experiments.merged import MergeSpec, merged_baseline, single_runs, start_state
from core.model import JointModel

from ..helpers import toy_config


def state(model_dir: str | Path) -> dict[str, torch.Tensor]:
    return JointModel.from_pretrained(model_dir).state_dict()


def best_state(run_dir: str | Path) -> dict[str, torch.Tensor]:
    return state(RunDir(run_dir).model("best"))


def test_with_one_task_at_lambda_one_the_merged_model_is_the_single_task_model(tmp_path: Path) -> None:
    base = toy_config(
        tmp_path,
        **{"tasks": {"digit": {"type": "classification", "num_classes": 10}}, "data.tasks": ["digit"]},
        **{"train.max_steps": 20, "train.eval_every": 10, "model.backbone.hidden": [16]},
    )
    spec = MergeSpec(methods=["task_arithmetic", {"name": "ties", "density": 1.0}], lambdas=[1.0])
    result = merged_baseline(base, spec, log=lambda *_: None)

    single = result["single_runs"]["digit"]
    assert single == str(tmp_path / "run" / "single" / "digit" / "seed0")  # compare's own run
    merged, alone = state(result["model_dir"]), best_state(single)
    assert merged.keys() == alone.keys() and all(torch.equal(merged[k], alone[k]) for k in alone)
    assert result["val"]["digit"] == pytest.approx(RunDir(single).summary()["val"]["digit"], abs=1e-7)
    assert result["tasks"]["digit"] == pytest.approx(RunDir(single).summary()["tasks"]["digit"], abs=1e-7)
    assert [c["score"] for c in result["candidates"]] == pytest.approx([0.0, 0.0], abs=1e-9)


@pytest.fixture(scope="module")
def text_base(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    from tests.nlp.conftest import make_encoder
    from tests.nlp.test_train import make_data, run_config

    root = tmp_path_factory.mktemp("merged_text")
    encoder = str(make_encoder(root / "encoder"))  # a tiny saved "pretrained" encoder
    base = run_config(encoder, make_data(root / "data"), root / "run")
    return base, root


def test_a_tiny_pretrained_encoder_merged_by_task_arithmetic_serves_every_head(text_base) -> None:
    base, _ = text_base
    spec = MergeSpec(methods=["task_arithmetic"], lambdas=[0.5, 1.0])
    lines: list[str] = []
    result = merged_baseline(base, spec, log=lambda line: lines.append(str(line)))

    assert set(result["tasks"]) == {"sentiment", "ner"} and set(result["val"]) == {"sentiment", "ner"}
    assert len(result["candidates"]) == 2
    assert result["lambda"] == max(result["candidates"], key=lambda c: c["score"])["lambda"]
    # the merged backbone by hand: theta_0 (the saved encoder) + lambda * sum of the task vectors
    runs = single_runs(base, 0)
    start = start_state(runs["sentiment"].config)
    tuned = {t: best_state(d) for t, d in result["single_runs"].items()}
    merged = state(result["model_dir"])
    for key, theta0 in start.items():
        want = theta0.double() + result["lambda"] * sum(tuned[t][key].double() - theta0.double() for t in tuned)
        torch.testing.assert_close(merged[key], want.to(theta0.dtype), rtol=0, atol=1e-6)
    for task in tuned:  # each head from its own run
        for key in (k for k in tuned[task] if k.startswith(f"heads.{task}.")):
            assert torch.equal(merged[key], tuned[task][key])
    served = JointModel.from_pretrained(result["model_dir"]).predict(["the movie was great", "alice went to paris"])
    assert set(served) == {"sentiment", "ner"}

    lines.clear()  # a rerun reads the result back
    assert merged_baseline(base, spec, log=lambda line: lines.append(str(line))) == result
    assert any("[done]" in line for line in lines)


def test_runs_from_different_starts_and_soft_sharing_are_refused(tmp_path: Path) -> None:
    base = toy_config(tmp_path, **{"train.max_steps": 4, "train.eval_every": 2, "model.backbone.hidden": [8]})
    dirs = {}
    for seed, task in enumerate(base.tasks):  # a random backbone seeded differently per task
        run = single_runs(base, seed)[task]
        execute(run, log=lambda *_: None)
        dirs[task] = run.dir
    with pytest.raises(ConfigError, match="started from another backbone"):
        merged_baseline(base, MergeSpec(), single=dirs, log=lambda *_: None)
    soft = load_config(raw={**base.to_dict(), "model": {**base.to_dict()["model"], "architecture": {"name": "mtan"}}})
    with pytest.raises(ConfigError, match="needs hard sharing"):
        merged_baseline(soft, MergeSpec(), log=lambda *_: None)
    with pytest.raises(ConfigError, match="unknown merger"):
        merged_baseline(base, MergeSpec(methods=["average"]), log=lambda *_: None)
