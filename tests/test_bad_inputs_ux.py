"""Bad values for every flag and input the reporting/UX commands take: one clear line on stderr, exit 2, no
traceback, and nothing written (table, plot, compare, heads, ls, run, extract --templates/--classnames/--device,
fit --save-predictions)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli as _run, assert_one_line_error as _one_line_error  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _row(**kw):
    base = dict(dataset="dtd", source_dataset="dtd", model="RN50", pretrained="openai", fingerprint="f",
                cache="c.h5", head="zeroshot", params={}, selected={}, protocol="paper", shots=1, seed=1, acc=50.0,
                mean_per_class_recall=49.0, per_class={"correct": [1, 0], "total": [1, 1]})
    return {**base, **kw}


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [_row(seed=s, acc=50.0 + s) for s in (1, 2)] + [_row(head="taskres", seed=s, acc=60.0) for s in (1, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# -- table ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--decimals", "-3"], ["--decimals -3", "0 to 10"]),
    (["--decimals", "11"], ["--decimals 11"]),
    (["--model", "ViT-L-14"], ["--model ViT-L-14", "RN50"]),
    (["--pretrained", "laion"], ["--pretrained laion", "openai"]),
    (["--format", "html"], ["--format"]),
])
def test_table_bad_flags(results, tmp_path, args, needles):
    before = _listing(tmp_path)
    _one_line_error(_run("table", results, *args, "-o", tmp_path / "t.md"), *needles)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("acc", ['"61.2"', "NaN", "-Infinity", "null", "false", "{}"])
def test_table_non_numeric_acc(tmp_path, acc):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + json.dumps(_row(seed=2, acc="X")).replace('"X"', acc) + "\n")
    _one_line_error(_run("table", path), "r.jsonl:2", "'acc' must be a finite number")


@pytest.mark.parametrize("field, value, needle", [
    ("acc", 101.5, "outside 0-100"), ("acc", -3, "outside 0-100"), ("mean_per_class_recall", "x", "finite number"),
    ("shots", 0, "'shots' must be 1 or more"), ("head", ["zeroshot"], "'head' must be a string"),
    ("dataset", None, "'dataset' must be a string"), ("params", [1], "'params' must be an object"),
    ("model", 5, "'model' must be a string"),
])
def test_table_bad_row_fields(tmp_path, field, value, needle):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + json.dumps(_row(seed=2, **{field: value})) + "\n")
    _one_line_error(_run("table", path), "r.jsonl:2", needle)


def test_table_conflicting_duplicates(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + json.dumps(_row(acc=70.0)) + "\n")
    _one_line_error(_run("table", path), "conflicting result rows", "r.jsonl:1", "r.jsonl:2")


# -- plot -------------------------------------------------------------------------------------------------------
def test_plot_out_is_an_existing_file(results, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    _one_line_error(_run("plot", results, "--out", other), "is an existing file")
    assert other.read_text() == "keep me"
    _one_line_error(_run("plot", results, "--out", other / "fig.png"), "is a file, not a folder")


def test_outputs_that_cannot_be_written(results, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    _one_line_error(_run("table", results, "-o", blocker / "t.md"), "cannot write the table")
    _one_line_error(_run("demo", "--out", blocker, "--no-progress"), "is a file, not a folder")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", out=blocker))
    _one_line_error(_run("run", recipe, "--root", tmp_path), "is a file, not a folder")
    assert blocker.read_text() == "x" and not (tmp_path / "cache").exists()


# -- compare ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--heads", "zeroshot"], ["exactly two heads"]),
    (["--heads", "zeroshot,zeroshot"], ["two different heads"]),
    (["--heads", "zeroshot,clap"], ["--heads clap", "no rows"]),
    (["--heads", "zeroshot,taskres", "--top", "-1"], ["--top -1"]),
    (["--heads", "zeroshot,taskres", "--shots", "x"], ["--shots"]),
    (["--heads", "zeroshot,taskres", "--datasets", "eurosat"], ["no rows"]),
])
def test_compare_bad_flags(results, args, needles):
    _one_line_error(_run("compare", results, *args), *needles)


# -- heads / ls / datasets ------------------------------------------------------------------------------------------
def test_heads_unknown_name():
    _one_line_error(_run("heads", "taskress"), "unknown head 'taskress'", "did you mean 'taskres'")


def test_ls_bad_folder(tmp_path, results):
    _one_line_error(_run("ls", tmp_path / "nope"), "does not exist")
    _one_line_error(_run("ls", results), "not a folder")
    _one_line_error(_run("ls", tmp_path, "--cache-dir", tmp_path / "other"), "give the folder once")


# -- run --------------------------------------------------------------------------------------------------------
RECIPE = """\
datasets: [caltech101, dtd]
model: tiny-vit
pretrained: none
cache_dir: {cache}
heads: [zeroshot]
shots: [1]
seeds: [1]
out: {out}
"""


@pytest.mark.parametrize("args, needles", [
    (["--datasets", "imagenet"], ["'imagenet' is not in the recipe's datasets"]),
    (["--datasets", ","], ["--datasets is empty"]),
    (["--datasets", "dtdd"], ["did you mean 'dtd'?"]),
])
def test_run_bad_flags(tmp_path, args, needles):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", out=tmp_path / "out"))
    _one_line_error(_run("run", recipe, *args), *needles)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, problems", [
    (["--check", "--root", "NOPE"], ["caltech101: data root", "dtd: data root"]),
    (["--check"], ["caltech101: no data root", "dtd: no data root"]),
])
def test_run_check_prints_one_problem_per_line(tmp_path, args, problems):
    """Issue 17: `run --check` names every problem on a line of its own, under one error line, exit code 2."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", out=tmp_path / "out"))
    args = [a if a != "NOPE" else str(tmp_path / "nope") for a in args]
    res = _run("run", recipe, *args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("featbench: error:") and "--check found 2 problem(s):" in lines[0], lines
    assert len(lines) == 1 + len(problems)
    for line, needle in zip(lines[1:], problems):
        assert line.startswith("  - ") and needle in line, (needle, line)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("key, value", [("device", "gpu"), ("extract", "{device: cuda:x}")])
def test_recipe_device_spelling(tmp_path, key, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(cache=tmp_path / "cache", out=tmp_path / "out") + f"{key}: {value}\n")
    _one_line_error(_run("run", recipe, "--check"), "cuda:N")


# -- extract: prompts and device --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from featbench.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), "caltech101", n_classes=3, per_split=(2, 1, 1), size=32)


TEMPLATE_CASES = [
    ("t.txt", "a photo of a {}.\nno placeholder here\n", ["t.txt:2", "exactly one '{}'"]),
    ("t.txt", "a {} and a {}\n", ["t.txt:1", "(it has 2)"]),
    ("t.txt", "# only a comment\n\n", ["no templates"]),
    ("t.json", '{"a": "{}"}', ["expected a list"]),
    ("t.json", '["a {}", 3]', ["item 2", "must be a string"]),
    ("t.json", "[not json", ["not valid JSON"]),
    ("t.yaml", "- a {}\n- a {}\n", ["listed twice"]),
]


@pytest.mark.parametrize("name, text, needles", TEMPLATE_CASES)
def test_extract_bad_templates(data_root, tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    _one_line_error(_run("extract", "--dataset", "caltech101", "--root", data_root, "--model", "tiny-vit",
                         "--pretrained", "none", "--device", "cpu", "--templates", path, "--cache-dir",
                         tmp_path / "cache"), "--templates", *needles)
    assert not (tmp_path / "cache").exists()


CLASSNAME_CASES = [
    ("n.txt", "one\ntwo\n", ["2 names for 3 classes"]),
    ("n.txt", "a\nb\na\n", ["both be named 'a'"]),
    ("n.json", '{"no_such_folder": "x"}', ["unknown class 'no_such_folder'"]),
    ("n.json", '["a", "b", ""]', ["item 3", "non-empty"]),
    ("n.json", "3", ["expected a list of names or a mapping"]),
]


@pytest.mark.parametrize("name, text, needles", CLASSNAME_CASES)
def test_extract_bad_classnames(data_root, tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    _one_line_error(_run("extract", "--dataset", "caltech101", "--root", data_root, "--model", "tiny-vit",
                         "--pretrained", "none", "--device", "cpu", "--classnames", path, "--cache-dir",
                         tmp_path / "cache"), "--classnames", *needles)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flag, value", [("--templates", "missing.txt"), ("--classnames", "missing.txt"),
                                         ("--templates", "."), ("--device", "gpu"), ("--device", "cuda:x"),
                                         ("--device", "cuda:-1")])
def test_extract_bad_paths_and_devices(data_root, tmp_path, flag, value):
    value = str(tmp_path / value) if value.endswith((".txt", ".")) else value
    _one_line_error(_run("extract", "--dataset", "caltech101", "--root", data_root, "--model", "tiny-vit",
                         "--pretrained", "none", flag, value, "--cache-dir", tmp_path / "cache"), flag)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda1"])
def test_fit_device_spelling(tmp_path, value):
    from test_protocol import make_cache

    cache, _ = make_cache(tmp_path / "a.h5")
    _one_line_error(_run("fit", cache, "--heads", "zeroshot", "--device", value, "--out", tmp_path / "r.jsonl",
                         "--no-progress"), f"--device {value}", "cuda:N")
    assert not (tmp_path / "r.jsonl").exists()


# -- fit --save-predictions -------------------------------------------------------------------------------------
def test_fit_save_predictions_not_a_folder(tmp_path):
    from test_protocol import make_cache

    cache, _ = make_cache(tmp_path / "a.h5")
    target = tmp_path / "file"
    target.write_text("x")
    _one_line_error(_run("fit", cache, "--heads", "zeroshot", "--shots", "1", "--seeds", "1", "--out",
                         tmp_path / "r.jsonl", "--no-progress", "--save-predictions", target), "--save-predictions",
                    "is a file")
    assert not (tmp_path / "r.jsonl").exists()
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        _one_line_error(_run("fit", cache, "--heads", "zeroshot", "--shots", "1", "--seeds", "1", "--out",
                             tmp_path / "r.jsonl", "--no-progress", "--save-predictions", ro), "not writable")
