"""The table path learns a near-linear target about as well as a ridge regression (issue 21:
clipping at the 0.5 / 99.5 % quantiles, dropout on the encoder's input projection and uncentred
bins kept it at 3-11x a ridge's MAE)."""

import importlib.util
from pathlib import Path

import pytest

from core.config import load_config
from core.experiments.builder import Experiment
from core.experiments.run import train
from core.rundir.directory import RunDir

ROOT = Path(__file__).resolve().parents[3]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_table_linear", ROOT / "scripts" / "bench_table_linear.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_a_near_linear_table_is_learned_close_to_a_ridge(tmp_path) -> None:
    raw = {
        "output_dir": str(tmp_path / "run"),
        "data": {"name": "near_linear", "rows": 1500, "targets": 2, "seed": 1},
        "model": {"backbone": {"name": "tabular", "dim": 64, "encoder": {"name": "mlp", "depth": 1}}},
        "tasks": {"y0": {}, "y1": {}},
        "loading": {"batch_size": 128},
        "train": {"max_steps": 1000, "lr": 0.005, "eval_every": 250, "progress": False},
        "report": {"enabled": False, "affinity_batches": 0, "train_eval_samples": 0},
    }
    config = load_config(raw=raw)
    train(config)
    tested = RunDir(config.output_dir).summary()["tasks"]
    bench, experiment = _bench(), Experiment(config)
    ratios = {}
    for task in ("y0", "y1"):  # y1 has 30 % of its labels hidden
        ridge = bench.tuned_ridge(experiment, task)
        assert ridge["test_pearson"] > 0.999  # near-linear indeed
        ratios[task] = tested[task]["mae"] / ridge["test_mae"]
    print(ratios)
    # a small, short run: 1.7-1.8x here (the benchmark: within 1.2x at 2000 steps); 2.4x before
    assert max(ratios.values()) < 2.0, ratios
