"""Recipe schema: shipped recipes validate; unknown keys and wrong types are errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from featbench.errors import FeatbenchError
from featbench.recipes import Recipe, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
BASE = """\
datasets: [caltech101]
model: tiny-vit
pretrained: none
heads: [zeroshot, taskres]
shots: [1, 2]
seeds: [1]
"""


def _write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_recipes_validate():
    names = {p.name for p in RECIPES}
    for required in ("coop-rn50.yaml", "coop-vitb16.yaml", "dg-imagenet.yaml", "ablate-taskres-alpha.yaml",
                     "leaderboard-rn50.yaml", "leaderboard-vitb16.yaml"):
        assert required in names
    for p in RECIPES:
        r = load_recipe(p)
        assert isinstance(r, Recipe) and r.heads and r.datasets
    coop = load_recipe(RECIPES[[p.name for p in RECIPES].index("coop-rn50.yaml")])
    assert len(coop.datasets) == 11 and coop.shots == [1, 2, 4, 8, 16] and coop.seeds == [1, 2, 3]
    assert coop.heads == ["zeroshot", "linear-probe", "tip-adapter", "tip-adapter-f", "taskres"]
    assert coop.protocol == "paper"
    lb = load_recipe(RECIPES[[p.name for p in RECIPES].index("leaderboard-rn50.yaml")])
    assert lb.protocol == "val" and lb.extract["pre_projection"] is True
    assert {"gda", "lp++", "clap", "prolip"} <= set(lb.heads)
    assert "text-projection" in lb.grids["taskres.base"]
    b2n = load_recipe(RECIPES[[p.name for p in RECIPES].index("base2new-rn50.yaml")])
    assert b2n.base_to_new and b2n.shots == [16] and b2n.seeds == [1, 2, 3] and len(b2n.datasets) == 11
    dg = load_recipe(RECIPES[[p.name for p in RECIPES].index("dg-imagenet.yaml")])
    assert "objectnet" in dg.eval_on
    shifts = next(t for t in dg.tables if t.get("name") == "table-shifts")
    assert shifts["datasets"] == ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r", "objectnet"]


def test_taskres_paper_recipe():
    import yaml

    path = RECIPES[[p.name for p in RECIPES].index("taskres-paper-rn50.yaml")]
    data = yaml.safe_load(path.read_text())
    assert data["heads"] == ["zeroshot", "linear-probe", "coop", "clip-adapter", "tip-adapter-f", "taskres"]
    assert data["grids"]["taskres.base"] == [None, "text-projection"]  # TaskRes and TaskRes*
    assert len(data["datasets"]) == 11 and data["shots"] == [1, 2, 4, 8, 16] and data["seeds"] == [1, 2, 3]
    assert {"rows": "head", "cols": "dataset"} in data["tables"]
    assert load_recipe(path).heads == data["heads"]


def test_defaults_and_extract_options(tmp_path):
    r = load_recipe(_write(tmp_path, BASE))
    assert r.name == "r" and r.protocol == "paper" and r.out_dir == Path("results/r")
    opts = r.extract_options()
    assert opts["view_shots"] == (1, 2) and opts["seeds"] == (1,)
    assert r.extract_options(test_only=True)["splits"] == ("test",)
    r = load_recipe(_write(tmp_path, BASE + "extract: {templates: prompts.txt}\n"))
    assert r.extract_options()["templates"] == "prompts.txt"
    assert r.dataset_root("caltech101", "/data") == "/data"
    r = load_recipe(_write(tmp_path, BASE + "root: /common\nroots: {caltech101: /own}\n"))
    assert r.dataset_root("caltech101", "/cli") == "/own"
    with pytest.raises(FeatbenchError, match="roots.dtd"):
        load_recipe(_write(tmp_path, BASE + "roots: {dtd: /x}\n"))


@pytest.mark.parametrize("extra, key", [
    ("shot: [1]\n", "shot"),
    ("extract:\n  viewz: 3\n", "extract.viewz"),
    ("shots: [1, 2]\n", "shots"),  # duplicated key
    ("protocol: test\n", "protocol"),
    ("extract:\n  views: ten\n", "extract.views"),
    ("jobs: 1.5\n", "jobs"),
    ("eval_on: imagenetv2\n", "eval_on"),
    ("extract:\n  pre_projection: 'yes'\n", "extract.pre_projection"),
    ("grids:\n  taskres.alpha: 0.5\n", "taskres.alpha"),
    ("sets:\n  taskres.alphaa: 0.5\n", "taskres.alphaa"),
    ("sets:\n  clap.lr: 0.5\n", "clap.lr"),  # a head the recipe does not run
])
def test_errors_name_key_and_file(tmp_path, extra, key):
    p = _write(tmp_path, BASE + extra, "bad-recipe.yaml")
    with pytest.raises(FeatbenchError) as err:
        load_recipe(p)
    msg = str(err.value)
    assert "bad-recipe.yaml" in msg and key in msg, msg
    assert "\n" not in msg


def test_wrong_types_in_required_keys(tmp_path):
    text = BASE.replace("shots: [1, 2]", "shots: 16")
    with pytest.raises(FeatbenchError, match=r"r.yaml: key 'shots' must be a non-empty list"):
        load_recipe(_write(tmp_path, text))
    with pytest.raises(FeatbenchError, match=r"missing required key 'model'"):
        load_recipe(_write(tmp_path, BASE.replace("model: tiny-vit\n", "")))
    with pytest.raises(FeatbenchError, match=r"unknown dataset 'caltech'"):
        load_recipe(_write(tmp_path, BASE.replace("[caltech101]", "[caltech]")))
    with pytest.raises(FeatbenchError, match=r"unknown head 'tip'"):
        load_recipe(_write(tmp_path, BASE.replace("[zeroshot, taskres]", "[tip]")))
    with pytest.raises(FeatbenchError, match=r"not valid YAML"):
        load_recipe(_write(tmp_path, "datasets: [a\n"))
    with pytest.raises(FeatbenchError, match=r"not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_which_existing_cache_serves_a_request():
    """extract.unserved: a cache holding a superset of what is asked serves it; anything less is named."""
    from featbench.extract import unserved

    made = dict(dataset="caltech101", splits=["test", "train", "val"], index_sha256="i", classnames_sha256="c",
                views=10, view_shots=[1, 2, 4, 8, 16], seeds=[1, 2, 3], train_rows="all", all_views=False,
                dtype="float16", pre_projection=True)
    ask = dict(made, view_shots=[1, 2], seeds=[1], pre_projection=False)
    assert unserved(made, ask) == []
    assert unserved(made, dict(ask, splits=["test"], views=0, index_sha256="j"), lambda s: "i") == []  # test only
    assert unserved(made, dict(ask, splits=["test"], index_sha256="j"), lambda s: "other") == \
        ["the dataset's image index changed"]
    assert unserved(made, dict(ask, views=3)) == ["views 10 vs 3"]
    assert unserved(made, dict(ask, views=0)) == ["it has 10 views, the request none"]
    assert unserved(made, dict(ask, seeds=[1, 4])) == ["seeds lack 4"]
    assert unserved(made, dict(ask, all_views=True)) == ["views only for the few-shot rows, not all_views"]
    assert unserved(dict(made, all_views=True), dict(ask, all_views=True, seeds=[9])) == []
    assert unserved(dict(made, pre_projection=False), dict(ask, pre_projection=True)) == ["no pre-projection features"]
    assert unserved(made, dict(ask, dtype="float32")) == ["dtype 'float16' vs 'float32'"]
    assert unserved(dict(made, splits=["test", "train"]), ask) == ["splits test,train lack val"]
    few = dict(made, train_rows="fewshot", views=0)
    assert unserved(few, dict(ask, train_rows="fewshot", views=0)) == []
    assert unserved(few, dict(ask, train_rows="fewshot", views=0, view_shots=[32])) == ["view_shots lack 32"]
    assert unserved(few, dict(ask, train_rows="all", views=0)) == ["train_rows fewshot vs all"]
