"""Issue 17, the recipe side: view sets come from the heads, custom datasets in recipes, packaged recipes,
`run --check` one problem per line, did-you-mean for name flags, distinct demo datasets, paper names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from featbench.errors import FeatbenchError
from featbench.extract_spec import heads_view_scales
from featbench.recipes import PACKAGED_RECIPES, find_recipe, load_recipe, packaged_recipes, validate
from conftest import run_cli as _run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIP, DASSL = (0.5, 1.0), (0.08, 1.0)
BASE = dict(model="tiny-vit", pretrained="none", shots=[1], seeds=[1])


# -- item 3: view sets come from the heads ---------------------------------------------------------------------
def test_view_sets_are_the_union_of_the_heads_paper_scales():
    assert heads_view_scales(["zeroshot", "tip-adapter", "taskres"]) == (TIP, DASSL)
    assert heads_view_scales(["taskres", "coop", "clip-adapter"]) == (DASSL,)
    assert heads_view_scales(["zeroshot", "linear-probe"]) == (TIP,)  # no head trains on views: the default
    with pytest.raises(FeatbenchError, match="did you mean 'taskres'"):
        heads_view_scales(["tasres"])


@pytest.mark.parametrize("name", ["taskres-paper-rn50", "base2new-rn50", "base2new-vitb16", "leaderboard-rn50",
                                  "leaderboard-vitb16", "dg-imagenet", "coop-rn50", "coop-vitb16", "demo"])
def test_paper_recipes_extract_each_heads_crops(name):
    """TaskRes/CoOp/CLIP-Adapter train on Dassl's (0.08, 1), Tip-Adapter on (0.5, 1): both sets, no recipe lists them."""
    recipe = load_recipe(name)
    assert "view_scales" not in recipe.extract and "view_scale" not in recipe.extract
    assert recipe.view_scales() == (TIP, DASSL)
    assert recipe.extract_options()["view_scales"] == (TIP, DASSL)
    assert recipe.extract_spec(recipe.datasets[0], "data").view_scales == (TIP, DASSL)


def test_recipe_scales_override_the_heads_and_test_only_targets_take_none():
    recipe = validate({**BASE, "datasets": ["imagenet"], "eval_on": ["imagenetv2"], "heads": ["taskres"],
                       "extract": {"view_scales": "0.5,1"}})
    assert recipe.view_scales() == (TIP,)
    assert recipe.extract_spec("imagenet", "data").view_scales == (TIP,)
    assert recipe.extract_spec("imagenetv2", "data").views == 0
    assert load_recipe("ablate-taskres-alpha").view_scales() == (DASSL,)  # TaskRes alone: its own crops only


def test_extract_for_heads_flag():
    from featbench.cli.extract import _scale_flags

    assert _scale_flags(None, None, "taskres,tip-adapter") == {"view_scales": (TIP, DASSL)}
    assert _scale_flags("0.08,1", None, None) == {"view_scale": "0.08,1"}
    assert _scale_flags(None, None, None) == {}
    for args, needle in ((["--for-heads", "taskres", "--view-scales", "0.5,1"], "give one of them"),
                         (["--for-heads", "tasres"], "did you mean 'taskres'"),
                         (["--for-heads", ","], "--for-heads is empty")):
        res = _run("extract", "--dataset", "dtd", "--root", "nowhere", *args)
        assert res.exit_code == 2 and needle in res.output, res.output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from featbench.synthetic import make_dataset

    root = tmp_path_factory.mktemp("data")
    make_dataset(root, layout="caltech101", n_classes=3, per_split=(4, 2, 3), size=32)
    make_dataset(root / "mine", layout="folder", n_classes=3, per_split=(4, 2, 3), size=32, first_class=3)
    make_dataset(root / "listed", layout="csv", n_classes=3, per_split=(4, 2, 3), size=32, first_class=6)
    return root


def _recipe(tmp_path, heads, datasets="[caltech101]", extra=""):
    path = tmp_path / "r.yaml"
    path.write_text(f"datasets: {datasets}\nmodel: tiny-vit\npretrained: none\ncache_dir: {tmp_path / 'cache'}\n"
                    f"extract: {{views: 2, device: cpu}}\nheads: {heads}\nshots: [1]\nseeds: [1]\n"
                    f"out: {tmp_path / 'out'}\n{extra}")
    return path


def test_check_says_which_view_sets_and_whether_a_cache_covers_them(tmp_path, data):
    res = _run("extract", "--dataset", "caltech101", "--root", data, "--model", "tiny-vit", "--pretrained", "none",
               "--cache-dir", tmp_path / "cache", "--views", "2", "--view-shots", "1", "--seeds", "1",
               "--device", "cpu", "--no-progress")  # the default (0.5, 1) set only
    assert res.exit_code == 0, res.output
    res = _run("run", _recipe(tmp_path, "[zeroshot, tip-adapter]"), "--check", "--root", data)
    assert res.exit_code == 0, res.output
    assert "view sets: (0.5, 1) (the heads' paper crop scales: tip-adapter (0.5, 1))" in res.output
    assert "covers view sets (0.5, 1)" in res.output
    recipe = _recipe(tmp_path, "[tip-adapter, taskres]")
    res = _run("run", recipe, "--check", "--root", data)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "--check found 1 problem(s):" in lines[0] and len(lines) == 2
    assert "holds view sets (0.5, 1), the recipe extracts (0.5, 1) + (0.08, 1)" in lines[1]
    assert "--overwrite" in lines[1] and "extract.view_scales to '0.5,1'" in lines[1]
    res = _run("run", recipe, "--check", "--root", data, "--overwrite")
    assert res.exit_code == 0 and "--overwrite rebuilds it with (0.5, 1) + (0.08, 1)" in res.output, res.output
    res = _run("run", recipe, "--check", "--only-fit")
    assert res.exit_code == 0 and "fitted as it is" in res.output, res.output


@pytest.mark.slow
def test_rows_of_a_recipe_without_scales_train_on_each_papers_crops(tmp_path, data):
    """The note's figure: TaskRes rows record (0.08, 1), Tip-Adapter rows (0.5, 1), from one recipe."""
    recipe = _recipe(tmp_path, "[tip-adapter, taskres]", extra="sets: {taskres.epochs: 2}\n")
    res = _run("run", recipe, "--root", data, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "view sets (0.5, 1) + (0.08, 1)" in res.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    scales = {r["head"]: r["views_scale"] for r in rows}
    assert scales == {"tip-adapter": [0.5, 1.0], "taskres": [0.08, 1.0]}
    assert "| TaskRes |" in res.output or "TaskRes" in (tmp_path / "out" / "table-head-by-shots.md").read_text()


# -- item 4: custom datasets in recipes --------------------------------------------------------------------------
def test_custom_dataset_entries_validate(tmp_path, data):
    recipe = validate({**BASE, "heads": ["zeroshot"], "datasets": [
        "caltech101", {"name": "mine", "folder": str(data / "mine"), "templates": ["a photo of a {}."]},
        {"name": "listed", "manifest": str(data / "listed" / "manifest.csv")}]})
    assert recipe.datasets == ["caltech101", "mine", "listed"] and set(recipe.custom) == {"mine", "listed"}
    spec = recipe.extract_spec("mine", None)
    assert (spec.dataset, spec.name, spec.templates) == ("folder", "mine", ("a photo of a {}.",))
    spec = recipe.extract_spec("listed", None)
    assert (spec.dataset, spec.name, spec.manifest) == ("csv", "listed", data / "listed" / "manifest.csv")
    assert recipe.dataset_root("mine") == str(data / "mine")
    for entry, needle in (({"folder": "x"}, "needs name"), ({"name": "a", "folder": "x", "manifest": "y"}, "exactly one"),
                          ({"name": "a", "folder": "x", "templats": []}, "did you mean 'templates'"),
                          ({"name": "dtd", "folder": "x"}, "catalog dataset's name"),
                          ({"name": "a", "folder": "x", "classnames": 3}, "classnames must be")):
        with pytest.raises(FeatbenchError, match=needle):
            validate({**BASE, "heads": ["zeroshot"], "datasets": [entry]})


def test_check_reads_custom_datasets_like_catalog_ones(tmp_path, data):
    datasets = (f"[caltech101, {{name: mine, folder: {data / 'mine'}}}, "
                f"{{name: listed, manifest: {data / 'listed' / 'manifest.csv'}}}]")
    res = _run("run", _recipe(tmp_path, "[zeroshot]", datasets), "--check", "--root", data)
    assert res.exit_code == 0, res.output
    assert f"mine: custom folder {data / 'mine'} (3 classes)" in res.output
    assert "listed: custom manifest" in res.output and "mine.h5" in res.output
    bad = f"[{{name: mine, folder: {tmp_path / 'nope'}}}, {{name: other, folder: {data / 'mine'}, classnames: [a]}}]"
    res = _run("run", _recipe(tmp_path, "[zeroshot]", bad), "--check")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and "2 problem(s)" in lines[0] and len(lines) == 3, res.output
    assert lines[1].startswith("  - mine:") and lines[2].startswith("  - other:") and "--classnames" in lines[2]


@pytest.mark.slow
def test_run_extracts_and_fits_a_custom_folder(tmp_path, data):
    res = _run("run", _recipe(tmp_path, "[zeroshot]", f"[{{name: mine, folder: {data / 'mine'}}}]"), "--no-progress")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in rows} == {"mine"}
    assert (tmp_path / "cache" / "tiny-vit--none" / "mine.h5").is_file() or list((tmp_path / "cache").rglob("mine.h5"))


# -- item 7: packaged recipes ------------------------------------------------------------------------------------
def test_recipes_ship_in_the_package_and_recipes_folder_is_the_same_files():
    packaged = packaged_recipes()
    assert {"coop-rn50", "taskres-paper-rn50", "demo", "dg-imagenet"} <= set(packaged)
    assert PACKAGED_RECIPES.parent.name == "featbench"
    top = REPO / "recipes"
    assert top.resolve() == PACKAGED_RECIPES.resolve()  # the user-facing folder is a link to the package data
    assert sorted(p.name for p in top.glob("*.yaml")) == sorted(p.name for p in PACKAGED_RECIPES.glob("*.yaml"))
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["featbench"]
    assert "**/*.yaml" in data  # featbench/recipes_data/*.yaml go into the wheel


def test_featbench_recipes_lists_them_and_run_finds_one_by_name(tmp_path, monkeypatch):
    res = _run("recipes")
    assert res.exit_code == 0, res.output
    for name in packaged_recipes():
        assert name in res.output
    assert "TaskRes paper comparison" in res.output
    monkeypatch.chdir(tmp_path)  # outside a clone: no recipes/ folder here
    assert find_recipe("coop-rn50") == packaged_recipes()["coop-rn50"]
    assert find_recipe("recipes/coop-rn50.yaml") == packaged_recipes()["coop-rn50"]  # the demo's closing hint
    (tmp_path / "coop-rn50.yaml").write_text("x: 1\n")
    assert find_recipe("coop-rn50.yaml") == Path("coop-rn50.yaml")  # a local file wins
    with pytest.raises(FeatbenchError, match="did you mean 'coop-rn50'"):
        find_recipe("coop-rn5")
    res = _run("run", "demo", "--check", "--root", tmp_path / "nope")
    assert res.exit_code == 2 and "demo.yaml: --check found" in res.output, res.output


# -- item 7: did-you-mean for name flags -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("res") / "r.jsonl"
    rows = [dict(dataset=ds, source_dataset=ds, model="RN50", pretrained="openai", fingerprint="f", cache="c.h5",
                 head=h, params={}, selected={}, protocol="paper", shots=1, seed=1, acc=50.0, mean_per_class_recall=49.0,
                 per_class={"correct": [1, 0], "total": [1, 1]})
            for h in ("zeroshot", "taskres") for ds in ("dtd", "caltech101")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("args, needle", [
    (["table", "R", "--heads", "tasres"], "--heads tasres: no rows for this head in the results; did you mean 'taskres'?"),
    (["table", "R", "--datasets", "dtdd"], "did you mean 'dtd'?"),
    (["plot", "R", "--heads", "Taskres", "--out", "P"], "did you mean 'taskres'?"),
    (["plot", "R", "--datasets", "caltech10", "--out", "P"], "did you mean 'caltech101'?"),
    (["compare", "R", "--heads", "zeroshot,tasres"], "did you mean 'taskres'?"),
    (["fit", "C", "--heads", "zeroshot,tasres"], "--heads tasres: unknown head 'tasres'; did you mean 'taskres'?"),
    (["extract", "--dataset", "dtdd", "--root", "P"], "--dataset dtdd: did you mean 'dtd'?"),
    (["extract", "--dataset", "dtd", "--root", "P", "--for-heads", "tip-adaptr"], "did you mean 'tip-adapter'"),
])
def test_name_flags_suggest_the_closest_name(tmp_path, results, args, needle):
    args = [{"R": results, "P": tmp_path / "p", "C": tmp_path / "c.h5"}.get(a, a) for a in args]
    res = _run(*args)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_labels_and_paper_names_pass_the_name_check(results):
    res = _run("table", results, "--heads", "TaskRes,zeroshot", "--datasets", "dtd", "--names", "registry")
    assert res.exit_code == 0 and "taskres" in res.output, res.output


# -- item 7: the demo's two datasets differ ---------------------------------------------------------------------
def test_demo_datasets_hold_different_classes_and_images(tmp_path, monkeypatch):
    import featbench.demo as demo
    from featbench.datasets import load_dataset

    monkeypatch.setattr(demo, "DEMO_DATA", dict(n_classes=3, per_split=(2, 1, 2), size=32, seed=0))
    data = demo.make_demo_data(tmp_path)
    a, b = (load_dataset(name, data) for name in demo.DEMO_DATASETS)
    assert not set(a.classnames) & set(b.classnames)
    images = [{p.read_bytes() for p in (data / folder).rglob("*.jpg")} for folder in ("caltech-101", "dtd")]
    assert images[0] and images[1] and not images[0] & images[1]  # no image is in both


# -- item 5: paper names declared on the heads -----------------------------------------------------------------
def test_every_head_declares_its_paper_name_and_tables_read_it_without_importing_it():
    from featbench.heads import BUILT_IN, get_head_class, head_origin, list_heads
    from featbench.heads.paper import DISPLAY_NAMES
    from featbench.table_model import display_name

    built_ins = [h for h in list_heads() if head_origin(h) == BUILT_IN]  # other tests may have added heads
    assert list(DISPLAY_NAMES) == built_ins and "taskres" in built_ins
    for head in built_ins:
        cls = get_head_class(head)
        assert cls.display_name, head  # every built-in head declares one
        assert display_name(head) == cls.display_name == DISPLAY_NAMES[head]
        assert display_name(head, "registry") == head
    assert display_name("taskres") == "TaskRes" and display_name("tip-adapter-f") == "Tip-Adapter-F"
    assert display_name("not-installed-head") == "not-installed-head"
    code = ("import sys; from featbench.table_model import display_name\n"
            "assert display_name('lp++') == 'LP++' and display_name('coop') == 'CoOp'\n"
            "assert not {'torch', 'sklearn', 'featbench.heads.coop'} & set(sys.modules), 'imported'\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_a_plugin_head_without_a_declared_name_shows_its_registry_name(tmp_path, monkeypatch):
    from featbench.heads import _REGISTRY, register_head
    from featbench.heads.paper import declared_display_name
    from featbench.table_model import display_name

    (tmp_path / "my_heads_i17.py").write_text(
        "from featbench.heads.taskres import TaskRes\n"
        "class Plain(TaskRes):\n    name = 'plain-i17'\n"
        "class Named(TaskRes):\n    name = 'named-i17'\n    display_name = 'Named (ours)'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        register_head("plain-i17", "my_heads_i17:Plain")
        register_head("named-i17", "my_heads_i17:Named")
        assert display_name("plain-i17") == "plain-i17"  # a subclass does not inherit TaskRes's paper name
        assert display_name("named-i17") == "Named (ours)"
        assert declared_display_name("my_heads_i17:Missing") == ""
    finally:
        _REGISTRY.pop("plain-i17", None)
        _REGISTRY.pop("named-i17", None)


def test_recipe_reports_use_paper_names(tmp_path, results):
    from featbench.recipes import write_reports

    written = write_reports(results, tmp_path, tables_spec=[{"rows": "head", "cols": "shots"}])
    md = written["markdown"]["table-head-by-shots"]
    assert "TaskRes" in md and "Zero-shot CLIP" in md and "| taskres |" not in md
