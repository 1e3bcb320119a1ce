"""Heads from outside featbench (featbench.heads._registry): the registry's rules, entry-point plugins and the
worked example in tests/plugin_example run end to end through `featbench fit` and `featbench table`.

A plugin is made visible without pip or a network the way an installed wheel is: a ``.dist-info`` folder
(METADATA + entry_points.txt) in a folder on sys.path, next to the plugin's source on sys.path; PYTHONPATH
carries both to fit workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import featbench.heads as H
from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.heads import BUILT_IN, MODULE_PATH, Registry, get_head_class, head_origin, list_heads
from featbench.results import read_rows

from test_protocol import make_cache

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "plugin_example"
MODULE = "featbench_nearest_mean"
TARGET = f"{MODULE}:NearestClassMean"
DIST = "featbench-nearest-mean"

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_dist_info(site: Path, dist: str, heads: dict[str, str], version: str = "0.1.0") -> None:
    """What `pip install` leaves behind that importlib.metadata reads: METADATA and entry_points.txt."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in heads.items())
    (info / "entry_points.txt").write_text(f"[{H.ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path (and PYTHONPATH) for fake installed distributions, plus the example's source."""
    folder = tmp_path / "site"
    folder.mkdir()
    for path in (EXAMPLE, folder):
        monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(EXAMPLE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv(H.DISABLE_AUTOLOAD_ENV, raising=False)
    sys.modules.pop(MODULE, None)
    _fresh_workers()  # loky reuses workers across tests: ones started earlier never saw this PYTHONPATH
    yield folder
    H.registry.pop(TARGET)
    H.registry.forget_plugins()
    sys.modules.pop(MODULE, None)
    _fresh_workers()


def _fresh_workers() -> None:
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


@pytest.fixture
def plugin(site):
    """The worked example, "installed" as the distribution its pyproject.toml describes."""
    write_dist_info(site, DIST, {"nearest-mean": TARGET})
    H.registry.forget_plugins()
    return site


def test_the_example_pyproject_declares_the_entry_point_the_tests_install():
    text = (EXAMPLE / "pyproject.toml").read_text()
    assert f'[project.entry-points."{H.ENTRY_POINT_GROUP}"]' in text
    assert f'nearest-mean = "{TARGET}"' in text and f'name = "{DIST}"' in text


# -- the registry's rules ------------------------------------------------------------------------------------------
def toy_registry() -> Registry:
    return Registry("head", "featbench.heads.base:Head", built_ins={"zeroshot": "featbench.heads.zeroshot:ZeroShot"})


def test_a_taken_name_is_refused_and_the_same_target_again_is_a_no_op():
    reg = toy_registry()
    reg.add("zeroshot", "featbench.heads.zeroshot:ZeroShot")  # what a fit worker does for every cell
    from featbench.heads.zeroshot import ZeroShot

    reg.add("zeroshot", ZeroShot)  # the class itself: the same target
    with pytest.raises(FeatbenchError, match="'zeroshot'.*taken by the built-in head featbench.heads.zeroshot:ZeroShot"):
        reg.add("zeroshot", "featbench.heads.gda:GDA")
    assert reg.get("zeroshot") is ZeroShot and str(reg.origin("zeroshot")) == BUILT_IN


def test_the_global_registry_refuses_to_rebind_a_built_in():
    with pytest.raises(FeatbenchError, match="taken by the built-in head"):
        H.register_head("gda", "featbench.heads.zeroshot:ZeroShot")
    assert get_head_class("gda").__name__ == "GDA"


def test_names_that_flags_would_split_are_refused():
    for name in ("a.b", "a,b", "a b"):
        with pytest.raises(FeatbenchError, match="--heads and --set split on these characters"):
            toy_registry().add(name, "featbench.heads.gda:GDA")
    with pytest.raises(FeatbenchError, match="is not 'package.module:Class'"):
        toy_registry().add("gda", "featbench.heads.gda")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(FeatbenchError, match=r"unknown head 'tasres'; did you mean 'taskres'"):
        get_head_class("tasres")
    with pytest.raises(FeatbenchError, match=r"choose from: zeroshot"):
        toy_registry().get("qqqqqqqq")


@pytest.mark.parametrize("target, needle", [
    ("featbench.errors:FeatbenchError", "not a subclass of featbench.heads.base.Head"),
    ("featbench_no_such_module:Head", "could not be imported: ModuleNotFoundError: No module named"),
    ("featbench.heads.gda:NoSuchClass", "could not be imported: AttributeError"),
])
def test_a_bad_target_fails_on_lookup_with_one_line(target, needle):
    reg = toy_registry()
    reg.add("bad", target)  # lazy: nothing is imported yet
    with pytest.raises(FeatbenchError) as err:
        reg.get("bad")
    assert needle in str(err.value) and "head 'bad' (register_head" in str(err.value)
    assert "\n" not in str(err.value)


# -- module paths ---------------------------------------------------------------------------------------------------
def test_a_module_path_is_imported_checked_and_registered_under_its_text(site):
    assert TARGET not in list_heads()
    cls = get_head_class(TARGET)
    assert cls.__name__ == "NearestClassMean" and TARGET in list_heads() and head_origin(TARGET) == MODULE_PATH
    assert get_head_class(TARGET) is cls
    H.register_head(TARGET, TARGET)  # a worker re-registering the cell's head_target
    with pytest.raises(FeatbenchError, match="could not be imported"):
        get_head_class(f"{MODULE}:NoSuchHead")
    assert f"{MODULE}:NoSuchHead" not in list_heads()  # a module path that fails is not left behind
    with pytest.raises(FeatbenchError, match="not a subclass"):
        get_head_class(f"{MODULE}:Param")


# -- entry points ---------------------------------------------------------------------------------------------------
def test_listing_a_plugin_imports_nothing_and_names_its_distribution(plugin):
    assert "nearest-mean" in list_heads() and list_heads()[: len(H._BUILT_INS)] == list(H._BUILT_INS)
    assert MODULE not in sys.modules
    assert head_origin("nearest-mean") == f"plugin {DIST} 0.1.0"
    assert H.registry.target("nearest-mean") == TARGET and MODULE not in sys.modules
    cls = get_head_class("nearest-mean")
    assert MODULE in sys.modules and cls.__module__ == MODULE
    H.register_head("nearest-mean", TARGET)  # workers: the same target again is a no-op


def test_a_fresh_process_lists_plugins_without_importing_them_or_torch(plugin):
    code = ("import sys, featbench.heads as H; names = H.list_heads(); "
            f"print('nearest-mean' in names, {MODULE!r} in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False", "False"], done.stderr


def test_featbench_heads_lists_a_plugin_with_its_origin(plugin):
    res = invoke("heads")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("nearest-mean"))
    assert "SimpleShot" in line and f"[plugin {DIST} 0.1.0]" in line
    assert not any("[" in ln for ln in res.stdout.splitlines() if ln.startswith("taskres"))
    described = invoke("heads", "nearest-mean")
    assert described.exit_code == 0 and f"from: plugin {DIST} 0.1.0 ({TARGET})" in described.stdout
    assert "center in [False, True]" in described.stdout


def test_the_disable_variable_turns_autoloading_off(plugin, monkeypatch):
    monkeypatch.setenv(H.DISABLE_AUTOLOAD_ENV, "1")
    H.registry.forget_plugins()
    assert "nearest-mean" not in list_heads()
    with pytest.raises(FeatbenchError, match="unknown head 'nearest-mean'"):
        get_head_class("nearest-mean")
    assert get_head_class(TARGET).__name__ == "NearestClassMean"  # a module path still works
    monkeypatch.delenv(H.DISABLE_AUTOLOAD_ENV)
    H.registry.forget_plugins()
    assert "nearest-mean" in list_heads()


def test_a_plugin_may_not_shadow_a_built_in(site):
    write_dist_info(site, "featbench-evil", {"gda": TARGET, "also-fine": TARGET}, version="6.6")
    H.registry.forget_plugins()
    assert get_head_class("gda").__module__ == "featbench.heads.gda" and "also-fine" in list_heads()
    (problem,) = H.plugin_problems().values()
    assert "head 'gda' (plugin featbench-evil 6.6" in problem and "taken by the built-in head" in problem
    res = invoke("heads")
    assert res.exit_code == 0 and "also-fine" in res.stdout
    (warning,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert warning.startswith("featbench: warning: plugin head 'gda' ignored:") and "featbench-evil 6.6" in warning


def test_a_broken_plugin_gets_one_line_and_breaks_nothing_else(site):
    write_dist_info(site, "featbench-broken", {"broken": "featbench_not_installed:Head",
                                               "not-a-head": "featbench.errors:FeatbenchError"}, version="1.2")
    write_dist_info(site, DIST, {"nearest-mean": TARGET})
    H.registry.forget_plugins()
    with pytest.raises(FeatbenchError) as err:
        get_head_class("broken")
    line = str(err.value)
    assert "\n" not in line and "head 'broken' (plugin featbench-broken 1.2" in line and "ModuleNotFoundError" in line
    with pytest.raises(FeatbenchError, match=r"'not-a-head' \(plugin featbench-broken 1.2.*not a subclass"):
        get_head_class("not-a-head")
    assert get_head_class("nearest-mean").__name__ == "NearestClassMean"
    res = invoke("heads")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert any(ln.startswith("broken") and "BROKEN:" in ln and "featbench-broken 1.2" in ln for ln in lines)
    assert any(ln.startswith("nearest-mean") and "SimpleShot" in ln for ln in lines)
    assert any(ln.startswith("taskres") for ln in lines)


def test_malformed_entry_point_is_a_problem_not_a_crash(site):
    write_dist_info(site, "featbench-typo", {"typo": "featbench_nearest_mean.NearestClassMean"}, version="0.0.1")
    H.registry.forget_plugins()
    assert "typo" not in list_heads()
    assert "is not 'package.module:Class'" in H.plugin_problems()["typo"]


# -- end to end ---------------------------------------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", dataset="caltech101", n_views=0)
    return path


def test_the_example_plugin_runs_by_name_through_fit_and_table(plugin, cache, tmp_path):
    out = tmp_path / "r.jsonl"
    res = invoke("fit", cache, "--heads", "nearest-mean,zeroshot", "--shots", "1,2", "--seeds", "1,2",
                 "--set", "nearest-mean.scale=20", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    mine = [r for r in rows if r["head"] == "nearest-mean"]
    assert len(mine) == 4 and all(r["params"]["scale"] == 20 for r in mine) and all(r["acc"] > 50 for r in mine)
    table = invoke("table", out)
    assert table.exit_code == 0, table.output
    assert "nearest-mean" in table.stdout
    val = invoke("fit", cache, "--heads", "nearest-mean", "--shots", "2", "--seeds", "1", "--protocol", "val",
                 "--out", tmp_path / "v.jsonl", "--no-progress")
    assert val.exit_code == 0, val.output
    (row,) = read_rows(tmp_path / "v.jsonl")
    assert set(row["selected"]) == {"center"}


def test_the_example_plugin_runs_in_fit_workers(plugin, cache, tmp_path):
    res = invoke("fit", cache, "--heads", "nearest-mean", "--shots", "1,2", "--seeds", "1,2", "--jobs", "2",
                 "--out", tmp_path / "two.jsonl", "--no-progress")
    assert res.exit_code == 0, res.output
    one = invoke("fit", cache, "--heads", "nearest-mean", "--shots", "1,2", "--seeds", "1,2",
                 "--out", tmp_path / "one.jsonl", "--no-progress")
    assert one.exit_code == 0, one.output

    def accs(path):
        return sorted((r["shots"], r["seed"], r["acc"]) for r in read_rows(path))

    assert accs(tmp_path / "two.jsonl") == accs(tmp_path / "one.jsonl") and len(accs(tmp_path / "one.jsonl")) == 4



def test_a_head_runs_by_module_path_through_fit(site, cache, tmp_path):
    out = tmp_path / "r.jsonl"
    res = invoke("fit", cache, "--heads", TARGET, "--shots", "1", "--seeds", "1,2", "--jobs", "2",
                 "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert [r["head"] for r in rows] == [TARGET, TARGET]
    assert invoke("table", out).exit_code == 0


RECIPE = """\
datasets: [caltech101]
model: tiny-vit
pretrained: none
heads: [zeroshot, {head}]
shots: [1, 2]
seeds: [1]
"""


def test_a_recipe_names_a_plugin_head(plugin, tmp_path):
    from featbench.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(head="nearest-mean") + "sets:\n  nearest-mean.scale: 20\n")
    assert load_recipe(path).heads == ["zeroshot", "nearest-mean"]


def test_a_recipe_names_a_head_by_module_path(site, tmp_path):
    from featbench.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(head=TARGET))
    assert load_recipe(path).heads == ["zeroshot", TARGET]
