"""Bad inputs die at the boundary: one clear line, exit code 2, no traceback and no result row.

Covers: typed hyperparameters (every head declares every parameter; nan/negative/zero/strings refused through
--set, --grid and recipes), NaN/Inf in caches, broken cache attributes and row indices, TaskRes bases, rows
that cannot honour their request (shots above a class's images, classes without train images, negative
seeds, overrides for heads not fitted), the --max-cells bound and lazy planning, YAML alias bombs, FIFOs in
manifests, --out paths, `info` on a folder and `import` of unusable arrays. Worker clean-up after kill -9 is in
test_bad_inputs_workers.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featbench.cache import base_attrs, write_cache
from featbench.cli import app
from featbench.heads import get_head_class, list_heads

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    """Exit 2, no traceback, exactly one non-empty stderr line (plus, at most, the cell-count announcement)."""
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("fit: ", "note: "))]
    assert len(lines) == 1 and lines[0].startswith("featbench: error: "), lines
    assert len(lines[0]) < 600, len(lines[0])
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def tiny_cache(path, *, train_counts=(4, 4, 4), test_per_class=3, dim=8, seed=0, n_views=2, text=True, **attr_kw):
    """A small Gaussian-cluster cache with `train_counts[c]` train images of class c (0 allowed)."""
    rng = np.random.default_rng(seed)
    n_classes = len(train_counts)
    means = rng.normal(size=(n_classes, dim)).astype(np.float32) * 3

    def split(counts, name):
        labels = np.concatenate([np.full(int(k), c) for c, k in enumerate(counts)]).astype(np.int64)
        feats = means[labels] + 0.3 * rng.normal(size=(labels.size, dim)).astype(np.float32)
        return {"paths": [f"{name}/{i}.jpg" for i in range(labels.size)], "labels": labels, "features": feats}

    splits = {"train": split(train_counts, "train"), "test": split([test_per_class] * n_classes, "test")}
    views = view_rows = None
    if n_views and splits["train"]["labels"].size:
        view_rows = np.arange(splits["train"]["labels"].size)
        views = np.stack([splits["train"]["features"] + 0.1 for _ in range(n_views)]).astype(np.float32)
    attrs = base_attrs(model="toy", pretrained="none", dataset=attr_kw.pop("dataset", "caltech101"), embed_dim=dim,
                       logit_scale=100.0, fingerprint="fp-bad")
    tf = np.stack([means, means + 0.01]).astype(np.float32) if text else None
    write_cache(path, attrs=attrs, classnames=[f"class_{i}" for i in range(n_classes)], splits=splits,
                text_features=tf, templates=["a {}.", "{}"] if text else None, views=views, view_rows=view_rows,
                dtype="float32")
    return Path(path)


@pytest.fixture
def cache(tmp_path):
    return tiny_cache(tmp_path / "c.h5")


def fit(cache_path, out, *extra, heads="zeroshot"):
    return invoke("fit", cache_path, "--heads", heads, "--shots", "1", "--seeds", "1", "--out", out, "--no-progress",
                  *extra)


# ----------------------------------------------------------------------------------------------------
# 5. typed, bounded hyperparameters
# ----------------------------------------------------------------------------------------------------
def test_every_head_declares_every_parameter():
    for name in list_heads():
        cls = get_head_class(name)
        declared = set(getattr(cls, "hyperparams", {}) or {})
        params = set(cls.param_names())
        assert params <= declared, (name, params - declared)
        assert declared <= params, (name, declared - params)


BAD_SETS = [
    "taskres.alpha=nan", "taskres.alpha=.nan", "taskres.alpha=.inf", "taskres.epochs=-5", "taskres.batch_size=-4",
    "taskres.lr=-1", "taskres.batch_size=0", "taskres.epochs=abc", "taskres.epochs=2.5", "taskres.alpha=true",
    "taskres.base_norm=5", "taskres.weight_decay=-0.1",
]


@pytest.mark.parametrize("item", BAD_SETS)
def test_bad_set_value_is_one_line(tmp_path, cache, item):
    out = tmp_path / "r.jsonl"
    res = fit(cache, out, "--set", item, heads="taskres")
    assert_one_line_error(res, item.split("=")[0])
    assert not out.exists()


@pytest.mark.parametrize("item", ["taskres.alpha=0.5,nan", "taskres.batch_size=8,0", "taskres.lr=[0.1, -1]",
                                  "clap.constraint=l2,bogus", "linear-probe.C=1,x"])
def test_bad_grid_value_is_one_line(tmp_path, cache, item):
    out = tmp_path / "r.jsonl"
    head = item.split(".")[0]
    res = fit(cache, out, "--grid", item, heads=head)
    assert_one_line_error(res, "--grid", item.split("=")[0])
    assert not out.exists()


def test_more_heads_refuse_out_of_range_values():
    bad = {"linear-probe": {"C": 0}, "tip-adapter": {"search_scale": [10.0]}, "tip-adapter-f": {"epochs": -1},
           "gda": {"alpha": -1.0}, "lp++": {"momentum": 1.0}, "clap": {"lambda_scale": float("nan")},
           "prolip": {"lr": 0.0}, "text-projection": {"eps": -1e-4}, "zeroshot": {"random_state": "x"}}
    from featbench.errors import FeatbenchError
    from featbench.heads import get_head

    for name, params in bad.items():
        with pytest.raises(FeatbenchError):
            get_head(name, **params)
    assert get_head("clap", lambda_scale=float("inf")).lambda_scale == float("inf")  # documented: freezes W


def _recipe(tmp_path, extra: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("datasets: [caltech101]\nmodel: toy\npretrained: none\nheads: [taskres]\nshots: [1]\n"
                    f"seeds: [1]\nout: {tmp_path / 'out'}\n{extra}")
    return path


@pytest.mark.parametrize("extra, needle", [
    ("sets: {taskres.alpha: .nan}\n", "taskres.alpha"),
    ("sets: {taskres.epochs: -5}\n", "taskres.epochs"),
    ("grids: {taskres.batch_size: [8, 0]}\n", "taskres.batch_size"),
    ("grids: {taskres.lr: [0.1, abc]}\n", "taskres.lr"),
    ("sets: {clap.lr: 0.1}\n", "clap"),
])
def test_bad_recipe_value_is_one_line(tmp_path, extra, needle):
    recipe = _recipe(tmp_path, extra)
    for args in (["run", recipe, "--check"], ["run", recipe, "--only-fit"]):
        res = invoke(*args)
        assert_one_line_error(res, needle)
    assert not (tmp_path / "out" / "results.jsonl").exists()


# ----------------------------------------------------------------------------------------------------
# 5. NaN/Inf and broken structure in caches
# ----------------------------------------------------------------------------------------------------
def _poke(path, name, index, value=np.nan):
    with h5py.File(path, "r+") as f:
        ds = f[name]
        data = ds[()]
        data[index] = value
        ds[...] = data


@pytest.mark.parametrize("name, index, head", [
    ("/splits/test/features", (0, 0), "zeroshot"),
    ("/splits/train/features", (slice(None), 1), "linear-probe"),
    ("/splits/train/views", (0, slice(None), 0), "tip-adapter"),
    ("/text/features", (0, 0, 0), "zeroshot"),
])
def test_nonfinite_cache_values_never_become_results(tmp_path, cache, name, index, head):
    _poke(cache, name, index, np.inf if "views" in name else np.nan)
    out = tmp_path / "r.jsonl"
    res = fit(cache, out, heads=head)
    assert_one_line_error(res, str(cache), name, "NaN/Inf", "re-extract")
    assert not out.exists()


def test_nonfinite_logit_scale_is_refused_on_open(tmp_path, cache):
    with h5py.File(cache, "r+") as f:
        f.attrs["logit_scale"] = np.nan
    out = tmp_path / "r.jsonl"
    assert_one_line_error(fit(cache, out), "logit_scale")
    assert_one_line_error(invoke("info", cache), "logit_scale")
    assert not out.exists()


def test_written_caches_record_their_finite_check(tmp_path, cache):
    from featbench.cache import Cache

    with Cache(cache) as c:
        assert c.nonfinite == []
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_features=np.full((2, 4), 1e39), train_labels=np.array([0, 1]))  # overflows float32
    res = invoke("import", bad, "--out", tmp_path / "i.h5", "--dataset", "x", "--model", "m", "--pretrained", "p")
    assert_one_line_error(res, "train_features", "NaN/Inf")


@pytest.mark.parametrize("key, value, needle", [
    ("embed_dim", "abc", "embed_dim"),
    ("embed_dim", 0, "embed_dim"),
    ("featbench_schema", "one", "featbench_schema"),
    ("logit_scale", "x", "logit_scale"),
    ("logit_scale", -1.0, "logit_scale"),
    ("model", 5, "model"),
    ("preprocess", "{not json", None),  # tolerated: info still shows the cache
])
def test_cache_attrs_of_the_wrong_type(tmp_path, cache, key, value, needle):
    with h5py.File(cache, "r+") as f:
        f.attrs[key] = value
    res = invoke("info", cache)
    if needle is None:
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        return
    assert_one_line_error(res, needle)
    out = tmp_path / "r.jsonl"
    assert_one_line_error(fit(cache, out), needle)
    assert not out.exists()


def test_rows_out_of_range_and_wrong_dtypes(tmp_path):
    path = tmp_path / "rows.h5"
    tiny_cache(path)
    with h5py.File(path, "r+") as f:
        n = f["splits/test/paths"].shape[0]
        f["splits/test"].create_dataset("rows", data=np.arange(n, dtype=np.int64) + 5)
    assert_one_line_error(invoke("info", path), "/splits/test/rows", "outside")
    path2 = tiny_cache(tmp_path / "vr.h5")
    with h5py.File(path2, "r+") as f:
        vr = f["splits/train/view_rows"][()]
        vr[0] = -1
        f["splits/train/view_rows"][...] = vr
    assert_one_line_error(invoke("info", path2), "view_rows")
    path3 = tiny_cache(tmp_path / "lab.h5")
    with h5py.File(path3, "r+") as f:
        labels = f["splits/test/labels"][()]
        del f["splits/test/labels"]
        f["splits/test"].create_dataset("labels", data=labels.astype(np.float32))
    assert_one_line_error(invoke("info", path3), "/splits/test/labels", "integers")
    path4 = tiny_cache(tmp_path / "dup.h5")
    with h5py.File(path4, "r+") as f:
        n = f["splits/test/paths"].shape[0]
        f["splits/test"].create_dataset("rows", data=np.r_[0, np.arange(n - 1)].astype(np.int64))
    out = tmp_path / "r.jsonl"
    assert_one_line_error(fit(path4, out), "/splits/test/rows", "repeats")
    assert not out.exists()


def test_zero_row_train_split_is_refused(tmp_path):
    path = tiny_cache(tmp_path / "empty.h5", train_counts=(0, 0, 0))
    out = tmp_path / "r.jsonl"
    assert_one_line_error(fit(path, out), "train split has no rows")
    assert not out.exists()


def test_info_on_a_directory(tmp_path):
    assert_one_line_error(invoke("info", tmp_path), "folder")


# ----------------------------------------------------------------------------------------------------
# 5. TaskRes bases
# ----------------------------------------------------------------------------------------------------
def _base_files(tmp_path):
    files = {}
    good = np.ones((3, 8), dtype=np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    files["nan"] = (tmp_path / "nan.npy", "NaN")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    files["object"] = (tmp_path / "obj.npy", "base")
    import pickle

    (tmp_path / "pickle.npy").write_bytes(pickle.dumps([[1.0] * 8] * 3))
    files["pickle"] = (tmp_path / "pickle.npy", "base")
    np.save(tmp_path / "classes.npy", np.ones((5, 8), dtype=np.float32))
    files["classes"] = (tmp_path / "classes.npy", "base")
    np.save(tmp_path / "strings.npy", np.array([["a"] * 8] * 3))
    files["strings"] = (tmp_path / "strings.npy", "base")
    return files


@pytest.mark.parametrize("kind", ["nan", "object", "pickle", "classes", "strings"])
def test_taskres_base_files(tmp_path, cache, kind):
    path, needle = _base_files(tmp_path)[kind]
    out = tmp_path / "r.jsonl"
    res = fit(cache, out, "--set", f"taskres.base={path}", "--set", "taskres.epochs=1", heads="taskres")
    assert_one_line_error(res, "taskres.base", needle)
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_taskres_base_pt_pickles_and_lists(tmp_path, cache):
    torch = pytest.importorskip("torch")
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    torch.save([torch.ones(3, 8)], tmp_path / "list.pt")
    for path in (tmp_path / "evil.pt", tmp_path / "list.pt"):
        out = tmp_path / "r.jsonl"
        res = fit(cache, out, "--set", f"taskres.base={path}", "--set", "taskres.epochs=1", heads="taskres")
        assert_one_line_error(res, "taskres.base")
        assert not out.exists()
    for value in ('[[1, "a"], [2, 3]]', "[[1, 2], [3]]", "true"):
        out = tmp_path / "r.jsonl"
        res = fit(cache, out, "--set", f"taskres.base={value}", "--set", "taskres.epochs=1", heads="taskres")
        assert_one_line_error(res, "taskres.base")
        assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# 6. rows that cannot honour their request say so
# ----------------------------------------------------------------------------------------------------
def test_shots_above_a_class_count_and_empty_classes_are_noted(tmp_path):
    path = tiny_cache(tmp_path / "short.h5", train_counts=(4, 1, 0))
    out = tmp_path / "r.jsonl"
    res = invoke("fit", path, "--heads", "zeroshot", "--shots", "2", "--seeds", "1", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    notes = " | ".join(row["notes"])
    assert "fewer than 2 train images ('class_1': 1)" in notes, notes
    assert "no train images (e.g. 'class_2')" in notes, notes
    full = tiny_cache(tmp_path / "full.h5")
    out2 = tmp_path / "r2.jsonl"
    assert invoke("fit", full, "--heads", "zeroshot", "--shots", "2", "--seeds", "1", "--out", out2,
                  "--no-progress").exit_code == 0
    assert not any("train images" in n for n in json.loads(out2.read_text())["notes"])


def test_negative_seeds_are_refused(tmp_path, cache):
    out = tmp_path / "r.jsonl"
    res = invoke("fit", cache, "--heads", "zeroshot", "--shots", "1", "--seeds", "1,-1", "--out", out, "--no-progress")
    assert_one_line_error(res, "--seeds -1")
    assert not out.exists()
    assert_one_line_error(invoke("fewshot", cache, "--shots", "1", "--seed", "-2"), "negative")


@pytest.mark.parametrize("flag", ["--set", "--grid"])
def test_override_for_a_head_not_fitted_is_an_error(tmp_path, cache, flag):
    out = tmp_path / "r.jsonl"
    res = fit(cache, out, flag, "taskres.alpha=0.5", heads="zeroshot")
    assert_one_line_error(res, "taskres", "not in --heads")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# 8. grid size: announced, bounded, planned lazily
# ----------------------------------------------------------------------------------------------------
def test_huge_grid_is_counted_and_refused_at_once(tmp_path, cache):
    out = tmp_path / "r.jsonl"
    a = ",".join(str(0.001 * i) for i in range(1000))
    b = ",".join(str(1e-5 * (i + 1)) for i in range(1000))
    t0 = time.perf_counter()
    res = fit(cache, out, "--grid", f"taskres.alpha={a}", "--grid", f"taskres.lr={b}", heads="taskres")
    took = time.perf_counter() - t0
    line = assert_one_line_error(res, "1000000 cells", "--max-cells")
    assert "fit: 1000000 cell(s)" in res.stderr and "raise" in line
    assert took < 10, took  # counted arithmetically; expanding it took 390 s before
    assert not out.exists()


def test_recipe_grid_over_max_cells_is_refused_before_extraction(tmp_path):
    recipe = _recipe(tmp_path, "grids: {taskres.alpha: [0.1, 0.2, 0.3]}\nroot: /nonexistent\n")
    res = invoke("run", recipe, "--max-cells", "2")
    assert_one_line_error(res, "3 cells", "--max-cells")
    assert not (tmp_path / "cache").exists()


def test_max_cells_flag_and_lazy_plan(tmp_path, cache):
    out = tmp_path / "r.jsonl"
    res = invoke("fit", cache, "--heads", "zeroshot", "--shots", "1,2", "--seeds", "1,2", "--out", out,
                 "--no-progress", "--max-cells", "3")
    assert_one_line_error(res, "4 cells", "--max-cells 3")
    res = invoke("fit", cache, "--heads", "zeroshot", "--shots", "1,2", "--seeds", "1,2", "--out", out,
                 "--no-progress", "--max-cells", "4")
    assert res.exit_code == 0 and "fit: 4 cell(s)" in res.stderr, res.output
    from featbench.runner import plan_fit

    plan = plan_fit([cache], heads=["taskres"], shots=[1, 2], seeds=[1, 2, 3], grids={
        "taskres.alpha": [0.001 * i for i in range(1000)], "taskres.lr": [1e-5 * (i + 1) for i in range(1000)]})
    assert plan.count == 1000 * 1000 * 2 * 3
    t0 = time.perf_counter()
    first = [p for _, p in zip(range(5), plan)]
    assert time.perf_counter() - t0 < 2.0
    assert [c.cell.overrides["lr"] for c in first][:2] == [1e-5, 1e-5] and first[0].cell.seed == 1


# ----------------------------------------------------------------------------------------------------
# 9. YAML alias bombs and error size
# ----------------------------------------------------------------------------------------------------
BOMB = """datasets: &a [caltech101, caltech101, caltech101, caltech101, caltech101, caltech101, caltech101]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
heads: [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_yaml_alias_bomb_is_refused_small_and_fast(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    t0 = time.perf_counter()
    res = invoke("run", path, "--check")
    assert time.perf_counter() - t0 < 5
    assert_one_line_error(res, "anchors and aliases")
    (tmp_path / "rec.yaml").write_text("a: &a [1, *a]\n")
    assert_one_line_error(invoke("run", tmp_path / "rec.yaml", "--check"), "recursive")
    (tmp_path / "deep.yaml").write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_one_line_error(invoke("run", tmp_path / "deep.yaml", "--check"), "nested")
    (tmp_path / "big.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    assert_one_line_error(invoke("run", tmp_path / "big.yaml", "--check"), "bytes")


def test_wide_values_are_cut_in_errors(tmp_path, cache):
    path = tmp_path / "wide.yaml"
    path.write_text("datasets: [caltech101]\nmodel: toy\npretrained: none\nheads: [zeroshot]\nshots: [1]\n"
                    f"seeds: {list(range(-5, 5000))}\n")
    assert_one_line_error(invoke("run", path, "--check"), "seeds")
    bomb = "[&a [1,1,1,1,1,1,1,1,1], " + ", ".join(["[*a,*a,*a,*a,*a,*a,*a,*a,*a]"] * 3) + "]"
    out = tmp_path / "r.jsonl"
    assert_one_line_error(fit(cache, out, "--set", f"taskres.alpha={bomb}", heads="taskres"), "taskres.alpha")


# ----------------------------------------------------------------------------------------------------
# 10. only regular files are opened as images
# ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_opened_as_an_image(tmp_path):
    from featbench.encoders import load_rgb

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="FIFO"):
        load_rgb(fifo)
    assert time.perf_counter() - t0 < 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_as_base_or_import_file(tmp_path, cache):
    os.mkfifo(tmp_path / "base.npy")
    out = tmp_path / "r.jsonl"
    res = fit(cache, out, "--set", f"taskres.base={tmp_path / 'base.npy'}", "--set", "taskres.epochs=1", heads="taskres")
    assert_one_line_error(res, "taskres.base", "regular file")
    os.mkfifo(tmp_path / "f.npz")
    res = invoke("import", tmp_path / "f.npz", "--out", tmp_path / "i.h5", "--dataset", "x", "--model", "m",
                 "--pretrained", "p")
    assert_one_line_error(res, "regular file")
    os.mkfifo(tmp_path / "c.h5.fifo")
    assert_one_line_error(invoke("info", tmp_path / "c.h5.fifo"), "regular file")


@pytest.mark.slow  # two real (tiny-model) extractions, ~10 s on a shared CPU
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_in_a_manifest_fails_or_is_skipped(tmp_path):
    from featbench.synthetic import class_image

    root = tmp_path / "data"
    root.mkdir()
    lines = ["path,label,split"]
    for split in ("train", "test"):
        for c in range(2):
            for i in range(2):
                name = f"{split}_{c}_{i}.png"
                class_image(c, i, size=32, split=split).save(root / name)
                lines.append(f"{name},c{c},{split}")
    os.mkfifo(root / "pipe.png")
    lines.append("pipe.png,c0,test")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    base = ["extract", "--dataset", "csv", "--name", "pipes", "--root", root, "--model", "tiny-vit", "--pretrained", "none",
            "--views", "0", "--no-progress", "--out", tmp_path / "c.h5", "--device", "cpu"]
    t0 = time.perf_counter()
    res = invoke(*base)
    assert_one_line_error(res, "pipe.png", "FIFO", "--skip-bad-images")
    res = invoke(*base, "--skip-bad-images")
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t0 < 60
    from featbench.cache import Cache

    with Cache(tmp_path / "c.h5") as c:
        assert c.skipped == ["pipe.png"]
        assert c.nonfinite == []  # extraction records its NaN/Inf scan


# ----------------------------------------------------------------------------------------------------
# --out, import
# ----------------------------------------------------------------------------------------------------
def test_out_is_checked_before_anything_runs(tmp_path, cache):
    folder = tmp_path / "results"
    folder.mkdir()
    assert_one_line_error(fit(cache, folder), "is a directory")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(fit(cache, afile / "r.jsonl"), "not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert_one_line_error(fit(cache, ro / "r.jsonl"), "not writable")
        finally:
            ro.chmod(0o700)


def test_run_out_that_is_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    recipe = _recipe(tmp_path, "")
    assert_one_line_error(invoke("run", recipe, "--only-fit", "-o", afile), "is a file")


def test_error_lines_are_bounded():
    from featbench.cli.app import one_line

    assert one_line("a\nb  c") == "a b c"
    cut = one_line("x" * 10**6)
    assert len(cut) < 2100 and cut.endswith("characters cut)")
    from featbench.errors import FeatbenchError
    from featbench.heads import get_head

    with pytest.raises(FeatbenchError, match="at least one value"):
        get_head("gda", alpha_grid=[])
    with pytest.raises(FeatbenchError) as err:
        get_head("taskres", alpha="y" * 10**6)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("arrays, needle", [
    ({"train_features": np.array([["a", "b"], ["c", "d"]]), "train_labels": np.array([0, 1])}, "train_features"),
    ({"train_features": np.ones((2, 3)), "train_labels": np.array([0, -1])}, "negative"),
    ({"train_features": np.ones((2, 3)), "train_labels": np.array([0.5, 1.0])}, "whole-number"),
    ({"train_features": np.ones((2, 3)), "train_labels": np.array(["a", "b"])}, "train_labels"),
    ({"train_features": np.array([[1.0, np.nan, 0.0], [1, 2, 3]]), "train_labels": np.array([0, 1])}, "NaN"),
])
def test_import_of_unusable_arrays(tmp_path, arrays, needle):
    npz = tmp_path / "f.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "i.h5"
    res = invoke("import", npz, "--out", out, "--dataset", "x", "--model", "m", "--pretrained", "p")
    assert_one_line_error(res, needle)
    assert not out.exists()
