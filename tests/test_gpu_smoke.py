"""benchmarks/gpu_smoke.sh --cpu-dry-run: the device smoke test's own paths, run on the CPU at toy sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKS = {"env", "extraction", "determinism", "cpu_vs_gpu", "jobs2", "oom", "throughput", "imagenet"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_smoke_dry_run_writes_one_passing_summary(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_smoke.sh"), "--cpu-dry-run"], env=env,
                         capture_output=True, text=True, timeout=880)
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_smoke_summary.json"]
    summary = json.loads((tmp_path / "gpu_smoke_summary.json").read_text())
    failed = {k: v for k, v in summary["checks"].items() if not v.get("ok")}
    assert res.returncode == 0 and not failed, (failed, res.stdout[-2000:], res.stderr[-2000:])
    assert set(summary["checks"]) == CHECKS and summary["dry_run"] is True
    assert "--batch-size" in summary["checks"]["oom"]["stderr"][-1]
    assert {"workers_0", "workers_1"} <= set(summary["checks"]["throughput"])


def test_gpu_smoke_documents_the_wheels_it_carries():
    header = (REPO / "benchmarks" / "gpu_smoke.sh").read_text()
    for wheel in ("open_clip_torch==", "ftfy==", "wcwidth==", "pip download", 'carry=[".whl"]'):
        assert wheel in header
    assert "/.whl/" in (REPO / ".gitignore").read_text().splitlines()
