"""The public Python API: the README's example runs as it stands, and the API agrees with the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example:start -->\n```python\n(.*?)```\n<!-- api-example:end -->", text, re.S)
    assert block, "README lost its API example markers"
    return block.group(1)


@pytest.mark.slow
def test_readme_api_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(README.parent))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head, shots, acc, epochs = lines[0].split()
    assert (head, shots, epochs) == ("taskres", "4", "20") and 0 <= float(acc) <= 100
    mine, acc_mine = lines[1].split()
    assert mine == "nearest-mean" and float(acc_mine) > 40  # 5 classes: chance is 20
    assert lines[2] == "8 rows; 0 new on a second call"
    assert any("nearest-mean" in ln for ln in lines[3:]) and any("Zero-shot CLIP" in ln for ln in lines[3:])
    written = [json.loads(ln) for ln in (tmp_path / "results" / "mine.jsonl").read_text().splitlines()]
    assert {r["head"] for r in written} == {"zeroshot", "nearest-mean"} and len(written) == 8


def _cache(tmp_path: Path) -> Path:
    import featbench

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    arrays = {}
    for split, n in (("train", 8), ("val", 2), ("test", 6)):
        y = np.repeat(np.arange(4), n)
        arrays[f"{split}_features"] = centres[y] + 0.5 * rng.normal(size=(y.size, 16))
        arrays[f"{split}_labels"] = y
    arrays["text_raw"] = centres[None]
    np.savez(tmp_path / "f.npz", **arrays)
    return featbench.import_features(tmp_path / "f.npz", tmp_path / "c.h5", dataset="toy", model="m", pretrained="p")


def test_evaluate_returns_the_row_fit_writes(tmp_path):
    import featbench

    cache = _cache(tmp_path)
    row = featbench.evaluate("linear-probe", cache, shots=2, seed=3)
    written = featbench.fit(cache, heads=["linear-probe"], shots=[2], seeds=[3], out=tmp_path / "r.jsonl")
    assert len(written) == 1
    for key in ("acc", "params", "selected", "fingerprint", "per_class", "shots", "seed", "protocol"):
        assert row[key] == written[0][key], key
    with featbench.open_cache(cache) as opened:  # an open Cache works as well as its path
        again = featbench.evaluate("linear-probe", opened, shots=2, seed=3)
    assert again["acc"] == row["acc"]


def test_evaluate_takes_an_instance_and_keeps_its_hyperparameters(tmp_path):
    import featbench

    cache = _cache(tmp_path)
    head = featbench.get_head("taskres", alpha=0.25, epochs=3)
    row = featbench.evaluate(head, cache, shots=1, seed=1)
    assert row["head"] == "taskres" and row["params"]["alpha"] == 0.25 and row["params"]["epochs"] == 3
    assert row["overrides"] == {"alpha": 0.25, "epochs": 3}  # only where the instance departs from the paper


def test_api_errors_are_one_line(tmp_path):
    import featbench

    with pytest.raises(featbench.FeatbenchError, match="does not exist"):
        featbench.open_cache(tmp_path / "missing.h5")
    cache = _cache(tmp_path)
    with pytest.raises(featbench.FeatbenchError, match="--protocol"):
        featbench.evaluate("zeroshot", cache, shots=1, protocol="best")
    with pytest.raises(featbench.FeatbenchError, match="alpha"):
        featbench.evaluate("taskres", cache, shots=1, alpha=float("nan"))
    with pytest.raises(featbench.FeatbenchError, match="not a featbench Head"):
        featbench.evaluate(dict, cache, shots=1)
