"""scripts/bench_torchjd.py: a tiny run of its protocol, and its methods computing the same update."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("torchjd")
pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_torchjd.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_torchjd", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_writes_times_and_peak_memory_per_method(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--models", "free_param", "--methods", "autograd", "ours"]
    command += ["--runs", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["protocol"]["runs"] == 2 and report["protocol"]["warmup"] == 1
    rows = {(r["setting"], r["method"]): r for r in report["results"]}
    assert set(rows) == {(s, m) for s in ("per_sample", "multi_task") for m in ("autograd", "ours")}
    for row in rows.values():
        assert len(row["times_s"]) == 2 and row["mean_s"] > 0 and row["batch_size"] == 64
        assert row["peak_rss_mib"] >= row["base_rss_mib"] > 0


@pytest.mark.parametrize("setting", ["per_sample", "multi_task"])
def test_every_method_computes_the_same_upgrad_update(setting):
    """Like is timed against like: torchjd's engines and ours give one update (UPGrad's QP is
    regularised a little differently on each side, hence a tolerance, not equality)."""
    module = bench()
    grads = {}
    for method in ("autojac", "autogram", "ours"):
        problem, step = module.build("free_param", setting, method, tasks=3)
        step()
        grads[method] = torch.cat([p.grad.flatten() for p in problem.backbone.parameters()])
    for method in ("autojac", "autogram"):
        cosine = torch.nn.functional.cosine_similarity(grads[method], grads["ours"], dim=0)
        assert cosine > 0.999, (method, float(cosine))
        assert grads[method].norm() == pytest.approx(float(grads["ours"].norm()), rel=1e-2), method
