"""End to end on generated images and the tiny random-weight model: `featbench run RECIPE` and `featbench demo`.

Small settings (one dataset, few heads/shots/seeds, few epochs) keep both tests to tens of seconds on 2 cores.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featbench.cli import app

pytestmark = pytest.mark.slow


def test_run_recipe_end_to_end(tmp_path):
    from featbench.synthetic import make_dataset

    data = make_dataset(tmp_path / "data", layout="caltech101", n_classes=3, per_split=(4, 2, 3), size=32)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""\
datasets: [caltech101]
root: {data}
model: tiny-vit
pretrained: none
cache_dir: {tmp_path / 'cache'}
extract: {{views: 2, device: cpu}}
heads: [zeroshot, tip-adapter, taskres]
shots: [1, 2]
seeds: [1]
sets: {{taskres.epochs: 3}}
out: {tmp_path / 'out'}
""")
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(recipe), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2
    assert {r["head"] for r in rows} == {"zeroshot", "tip-adapter", "taskres"}
    for stem in ("table-dataset-by-shots", "table-head-by-shots"):
        for ext in (".csv", ".tex", ".md"):
            assert (out / (stem + ext)).stat().st_size > 0
    assert r"\toprule" in (out / "table-head-by-shots.tex").read_text()
    for ext in (".png", ".pdf"):
        assert (out / ("accuracy-vs-shots" + ext)).stat().st_size > 1000
    assert "| head | rank |" in res.output or "| head | dataset |" in res.output

    # rerun with --only-fit: caches exist, every row is already there -> nothing new, tables rewritten
    res = runner.invoke(app, ["run", str(recipe), "--only-fit", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    # --only-fit without caches is a clear one-line error
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace(str(tmp_path / "cache"), str(tmp_path / "nocache")))
    res = runner.invoke(app, ["run", str(bad), "--only-fit", "--no-progress"])
    assert res.exit_code == 2 and "cache(s) not found" in res.output


def test_demo_completes_offline(tmp_path, monkeypatch):
    import featbench.demo as demo

    # the real demo: 2 datasets, 5 heads, shots 1/2/4, seeds 1/2 (about a minute); the test trims the grid
    monkeypatch.setattr(demo, "DEMO_DATASETS", ("caltech101",))
    monkeypatch.setattr(demo, "DEMO_SHOTS", (1, 2))
    monkeypatch.setattr(demo, "DEMO_SEEDS", (1,))
    monkeypatch.setattr(demo, "DEMO_JOBS", 1)
    monkeypatch.setattr(demo, "DEMO_DATA", dict(n_classes=3, per_split=(4, 2, 3), size=32, seed=0))
    monkeypatch.setattr(demo, "DEMO_SETS", {"tip-adapter-f.epochs": 2, "taskres.epochs": 2,
                                            "linear-probe.search": False})
    import featbench.plots as plots

    seen = {}
    real_plot = plots.plot_curves

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_plot(*args, **kwargs)

    import featbench.recipes as recipes

    monkeypatch.setattr(plots, "plot_curves", spy)
    monkeypatch.setattr(recipes, "plot_curves", spy)  # the name recipes imported (whichever test imported it first)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "RANDOM weights" in seen["title"]  # the figure itself says the weights are random
    assert "RANDOM weights" in res.output
    assert "featbench run recipes/coop-rn50.yaml --root" in res.output
    # paper names; the demo's lighter settings are overrides, so their labels carry them (issue 17)
    for head in ("Zero-shot CLIP |", "Linear probe CLIP (search=False) |", "Tip-Adapter |", "Tip-Adapter-F (epochs=2) |",
                 "TaskRes (epochs=2) |"):
        assert f"| {head}" in res.output
    assert (tmp_path / "demo" / "accuracy-vs-shots.png").stat().st_size > 1000


def test_run_reuses_a_default_extract_cache_and_runs_a_subset(tmp_path):
    """`extract` with its default options, then `run` on a recipe needing fewer shots/seeds: the cache is reused
    (its views cover the recipe's), `--datasets` runs a subset, `--check` looks at roots and weights."""
    from featbench.synthetic import make_dataset

    data = tmp_path / "data"
    for layout in ("caltech101", "dtd"):
        make_dataset(data, layout=layout, n_classes=3, per_split=(4, 2, 3), size=32)
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "--dataset", "caltech101", "--root", str(data), "--model", "tiny-vit",
                              "--pretrained", "none", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    cache = next((tmp_path / "cache").rglob("caltech101.h5"))
    before = cache.stat().st_mtime_ns
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
datasets: [caltech101, dtd]
model: tiny-vit
pretrained: none
cache_dir: {tmp_path / 'cache'}
extract: {{views: 10, device: cpu}}
heads: [zeroshot]
shots: [1, 2]
seeds: [1]
out: {tmp_path / 'out'}
""")
    res = runner.invoke(app, ["run", str(recipe), "--check", "--root", str(data)])
    assert res.exit_code == 0, res.output
    assert "caltech101: cache" in res.output and "dtd: data in" in res.output and "random weights" in res.output
    res = runner.invoke(app, ["run", str(recipe), "--check", "--root", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "dtd: data root" in res.output and "not a folder" in res.output
    res = runner.invoke(app, ["run", str(recipe), "--datasets", "caltech101", "--no-progress", "--root", str(data)])
    assert res.exit_code == 0, res.output
    assert "covers this request" in res.output
    assert cache.stat().st_mtime_ns == before  # reused, not rebuilt
    rows = [json.loads(l) for l in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in rows} == {"caltech101"} and len(rows) == 2
    res = runner.invoke(app, ["run", str(recipe), "--datasets", "caltech101", "--no-progress"])  # no --root
    assert res.exit_code == 0 and "using the existing cache" in res.output, res.output
    res = runner.invoke(app, ["run", str(recipe), "--datasets", "imagenet"])
    assert res.exit_code == 2 and "not in the recipe's datasets" in res.output
    # a recipe asking for more than the cache holds is refused with run's own flag in the fix
    recipe.write_text(recipe.read_text().replace("views: 10", "views: 3"))
    res = runner.invoke(app, ["run", str(recipe), "--datasets", "caltech101", "--no-progress", "--root", str(data)])
    assert res.exit_code == 2 and "views 10 vs 3" in res.output and "featbench run --overwrite" in res.output


def test_demo_folder_is_git_ignored():
    from pathlib import Path

    from featbench.demo import DEFAULT_OUT

    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert f"{DEFAULT_OUT}/" in ignored
