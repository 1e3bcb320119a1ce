"""`featbench fit` / `featbench fewshot` through typer's CliRunner: output, resume, and clean one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featbench.cli import app
from featbench.fewshot import fewshot_rows
from featbench.results import read_rows

from test_protocol import make_cache, test_heads  # noqa: F401  (fixture)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_fit_writes_rows_and_summary(tmp_path, test_heads):
    a, _ = make_cache(tmp_path / "a.h5", dataset="caltech101")
    b, _ = make_cache(tmp_path / "b.h5", dataset="dtd", seed=2)
    out = tmp_path / "res" / "r.jsonl"
    res = invoke("fit", a, b, "--heads", "test-ncm,test-text", "--shots", "1,2", "--seeds", "1,2",
                 "--grid", "test-ncm.mix=0,0.5", "--set", "test-ncm.scale=5", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert len(rows) == 2 * (2 + 1) * 2 * 2
    assert "test-ncm" in res.stdout and "1-shot" in res.stdout and "2-shot" in res.stdout
    # the summary has one line per grid point, never the average over the grid's values
    assert "test-ncm (mix=0)" in res.stdout and "test-ncm (mix=0.5)" in res.stdout
    for mix in (0, 0.5):
        line = next(ln for ln in res.stdout.splitlines() if f"test-ncm (mix={mix})" in ln)
        accs = [r["acc"] for r in rows if r["head"] == "test-ncm" and r["params"]["mix"] == mix and r["shots"] == 1]
        assert f"{sum(accs) / len(accs):.2f}" in line
    again = invoke("fit", a, b, "--heads", "test-ncm,test-text", "--shots", "1,2", "--seeds", "1,2",
                   "--grid", "test-ncm.mix=0,0.5", "--set", "test-ncm.scale=5", "--out", out, "--no-progress")
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    assert len(read_rows(out)) == len(rows)


def test_fit_val_protocol_and_jobs_flag(tmp_path, test_heads):
    a, _ = make_cache(tmp_path / "a.h5")
    out = tmp_path / "r.jsonl"
    res = invoke("fit", a, "--heads", "test-ncm", "--shots", "2", "--seeds", "1", "--protocol", "val",
                 "--out", out, "--no-progress", "--jobs", "1")
    assert res.exit_code == 0, res.output
    (row,) = read_rows(out)
    assert row["protocol"] == "val" and set(row["selected"]) == {"mix", "dummy"}


def test_fewshot_prints_coop_picks(tmp_path):
    a, _ = make_cache(tmp_path / "a.h5")
    res = invoke("fewshot", a, "--shots", "2", "--seed", "3")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    from featbench.cache import Cache

    with Cache(a) as c:
        sub = fewshot_rows(c.labels("train"), c.labels("val"), 2, 3)
        assert got["train"] == [c.paths("train")[r] for r in sub.train]
        assert got["val"] == [c.paths("val")[r] for r in sub.val]
    assert len(got["train"]) == 10 and len(got["val"]) == 10
    inet, _ = make_cache(tmp_path / "imagenet.h5", dataset="imagenet", with_val=False, per_class=(5, 0, 2))
    res = invoke("fewshot", inet, "--shots", "1", "--seed", "1")
    assert res.exit_code == 0 and json.loads(res.stdout)["val"] == []


@pytest.mark.parametrize("args, match", [
    (["fit", "{missing}", "--heads", "test-ncm"], "does not exist"),
    (["fit", "{cache}", "--heads", "test-ncm", "--shots", "1,x"], "--shots"),
    (["fit", "{cache}", "--heads", "test-ncm", "--seeds", ""], "--seeds"),
    (["fit", "{cache}", "--heads", "nohead"], "unknown head"),
    (["fit", "{cache}", "--heads", "test-ncm", "--set", "test-ncm.mix"], "--set"),
    (["fit", "{cache}", "--heads", "test-ncm", "--set", "test-ncm.nope=1"], "no parameter 'nope'"),
    (["fit", "{cache}", "--heads", "test-ncm", "--grid", "bad=1,2"], "--grid"),
    (["fit", "{cache}", "--heads", "test-ncm", "--protocol", "test"], "--protocol"),
    (["fit", "{cache}", "--heads", "test-ncm", "--eval-on", "{missing}"], "--eval-on"),
    (["fit", "{bad}", "--heads", "test-ncm"], "missing root attribute"),
    (["fewshot", "{missing}", "--shots", "1", "--seed", "1"], "does not exist"),
    (["fewshot", "{cache}", "--shots", "0", "--seed", "1"], "--shots"),
])
def test_clean_one_line_errors(tmp_path, test_heads, args, match):
    cache, _ = make_cache(tmp_path / "a.h5")
    bad = tmp_path / "bad.h5"
    import h5py

    with h5py.File(bad, "w") as f:
        f.attrs["featbench_schema"] = 1
    subs = {"{cache}": str(cache), "{missing}": str(tmp_path / "missing.h5"), "{bad}": str(bad)}
    args = [subs.get(a, a) for a in args] + ["--out" if args[0] == "fit" else None, str(tmp_path / "r.jsonl") if args[0] == "fit" else None]
    res = invoke(*[a for a in args if a is not None])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("featbench: error:") and match in lines[0], res.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_per_class_counts_predictions_and_compare(tmp_path, test_heads):
    import numpy as np

    from featbench.cache import Cache

    a, _ = make_cache(tmp_path / "a.h5", dataset="caltech101")
    out = tmp_path / "r.jsonl"
    preds = tmp_path / "preds"
    res = invoke("fit", a, "--heads", "test-ncm,test-text", "--shots", "1,2", "--seeds", "1,2", "--out", out,
                 "--no-progress", "--save-predictions", preds)
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    with Cache(a) as c:
        y = c.labels("test")
        n_classes = c.num_classes
        names = list(c.classnames)
    for r in rows:
        pc = r["per_class"]
        assert len(pc["correct"]) == len(pc["total"]) == n_classes
        assert pc["total"] == np.bincount(y, minlength=n_classes).tolist()
        assert 100.0 * sum(pc["correct"]) / sum(pc["total"]) == pytest.approx(r["acc"])
        saved = np.load(preds / r["predictions"])
        assert saved["label"].tolist() == y.tolist()
        assert 100.0 * (saved["pred"] == saved["label"]).mean() == pytest.approx(r["acc"])
    assert len({r["predictions"] for r in rows}) == len(rows)
    res = invoke("compare", out, "--heads", "test-ncm,test-text", "--shots", "2", "--top", "3")
    assert res.exit_code == 0, res.output
    assert "caltech101, 2-shot" in res.output and "seeds 1,2" in res.output
    assert "largest gains" in res.output or "largest losses" in res.output or "0 classes better, 0 worse" in res.output
    assert names  # classes are named from the cache where a class is listed (see test_tables for the deltas)
    for bad, msg in ((["--heads", "test-ncm"], "exactly two heads"), (["--heads", "test-ncm,nope"], "no rows for this head"),
                     (["--heads", "test-ncm,test-text", "--top", "0"], "--top 0")):
        res = invoke("compare", out, *bad)
        assert res.exit_code == 2 and msg in res.output, res.output
    res = invoke("fit", a, "--heads", "test-ncm", "--shots", "1", "--seeds", "1", "--out", tmp_path / "x.jsonl",
                 "--no-progress", "--save-predictions", out)
    assert res.exit_code == 2 and "is a file, not a folder" in res.output and not (tmp_path / "x.jsonl").exists()
