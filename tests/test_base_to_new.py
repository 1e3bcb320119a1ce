"""Base-to-new (CoCoOp): the class split, relabelling, per-subset accuracy, fallback rows, resume, tables.

The expected split is computed here independently of featbench.base_to_new: its own sorted label set of the
few-shot train subset, cut at ceil(C / 2).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featbench.cache import Cache
from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.fewshot import fewshot_rows
from featbench.results import read_rows, row_key
from featbench.runner import run_fit
from featbench.heads.zeroshot import ZeroShot
from tests.test_protocol import make_cache

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _expected_split(cache_path, shots, seed):
    """Independent: sorted label set of the few-shot train subset, first ceil(n/2) = base."""
    with Cache(cache_path) as c:
        train_labels = np.asarray(c.labels("train"))
        val_labels = np.asarray(c.labels("val")) if c.has_split("val") else None
        sub = fewshot_rows(train_labels, val_labels, shots, seed)
        labels = sorted({int(train_labels[r]) for r in sub.train})
        m = math.ceil(len(labels) / 2)
        return labels[:m], labels[m:]


def _zeroshot_by_hand(cache_path, classes):
    """Zero-shot accuracy (%) of the test images of `classes`, over those classes only, from the raw arrays."""
    with Cache(cache_path) as c:
        text = np.asarray(c.text_features(), np.float64)  # [T, C, D]
        X = np.asarray(c.features("test", None), np.float64)
        y = np.asarray(c.labels("test"))[np.asarray(c.feature_rows("test"))]
    t = text / np.linalg.norm(text, axis=-1, keepdims=True)
    w = t.mean(0)
    w = w / np.linalg.norm(w, axis=-1, keepdims=True)
    mask = np.isin(y, classes)
    Xs, ys = X[mask], y[mask]
    relabel = {c: i for i, c in enumerate(classes)}
    yr = np.array([relabel[int(v)] for v in ys])
    pred = (Xs @ w[classes].T).argmax(1)
    return 100.0 * float((pred == yr).mean()), len(yr)


@pytest.mark.parametrize("n_classes", [7, 6])
def test_rows_match_an_independent_split(tmp_path, n_classes):
    cache, _ = make_cache(tmp_path / "c.h5", n_classes=n_classes, per_class=(6, 3, 5), noise=1.2)
    out = tmp_path / "r.jsonl"
    rows = run_fit([cache], heads=["zeroshot", "taskres", "clip-adapter"], shots=[2], seeds=[1, 2], out=out,
                   sets={"taskres.epochs": 3, "clip-adapter.epochs": 3}, progress=False, base_to_new=True)
    base, new = _expected_split(cache, 2, 1)
    assert len(base) == math.ceil(n_classes / 2) and len(base) + len(new) == n_classes
    assert len(rows) == 3 * 2 * 2
    assert {r["classes"] for r in rows} == {"base", "new"}
    for r in rows:
        classes = base if r["classes"] == "base" else new
        assert r["n_classes"] == len(classes)
        acc, n = _zeroshot_by_hand(cache, classes)
        assert r["n_test"] == n == 5 * len(classes)
        if r["head"] == "zeroshot":
            assert r["acc"] == pytest.approx(acc, abs=1e-9)
            assert r["fallback"] is None
    by = {(r["head"], r["classes"], r["seed"]): r for r in rows}
    # TaskRes has per-class parameters: on new classes it is zero-shot CLIP, and the row says so
    for seed in (1, 2):
        tr_new = by[("taskres", "new", seed)]
        assert tr_new["fallback"] == "zeroshot" and any("fallback" in n for n in tr_new["notes"])
        assert tr_new["acc"] == pytest.approx(by[("zeroshot", "new", seed)]["acc"])
        assert by[("taskres", "base", seed)]["fallback"] is None
        # CLIP-Adapter scores new classes itself: its adapter with the new classes' text
        assert by[("clip-adapter", "new", seed)]["fallback"] is None
    # resume: the same command appends nothing; a plain fit writes "all" rows next to them
    assert run_fit([cache], heads=["zeroshot"], shots=[2], seeds=[1, 2], out=out, progress=False,
                   base_to_new=True) == []
    plain = run_fit([cache], heads=["zeroshot"], shots=[2], seeds=[1], out=out, progress=False)
    assert [r["classes"] for r in plain] == ["all"]
    assert len({row_key(r) for r in read_rows(out)}) == len(read_rows(out))


SEEN: dict = {}


class SpyHead(ZeroShot):
    """Zero-shot that records what fit() received."""

    name = "test-b2n-spy"
    uses_views = True

    def fit(self, X, y=None, **ctx):
        SEEN.update(y=np.asarray(y), text=np.asarray(ctx["text"]), names=list(ctx["classnames"]),
                    views=ctx.get("views"), n=len(X))
        return super().fit(X, y, **ctx)


def test_training_sees_only_base_classes_relabelled(tmp_path):
    from featbench.heads import register_head

    register_head(SpyHead.name, f"{SpyHead.__module__}:SpyHead")
    seen = SEEN
    cache, _ = make_cache(tmp_path / "c.h5", n_classes=5, per_class=(6, 3, 4))
    run_fit([cache], heads=["test-b2n-spy"], shots=[2], seeds=[1], out=tmp_path / "r.jsonl", progress=False,
            base_to_new=True)
    base, _ = _expected_split(cache, 2, 1)
    assert sorted(set(seen["y"].tolist())) == list(range(len(base))) and seen["n"] == 2 * len(base)
    with Cache(cache) as c:
        text = np.asarray(c.text_features())
        names = list(c.classnames)
    np.testing.assert_array_equal(seen["text"], text[:, base])
    assert seen["names"] == [names[i] for i in base]
    assert seen["views"].shape[1] == seen["n"]


def test_refusals(tmp_path):
    cache, _ = make_cache(tmp_path / "c.h5", with_text=False)
    with pytest.raises(FeatbenchError, match="--base-to-new.*text"):
        run_fit([cache], heads=["linear-probe"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False,
                base_to_new=True)
    other, _ = make_cache(tmp_path / "d.h5")
    with pytest.raises(FeatbenchError, match="--eval-on"):
        run_fit([other], heads=["zeroshot"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False,
                base_to_new=True, eval_on=[other])


def test_cli_flag_and_table(tmp_path):
    caches = [make_cache(tmp_path / f"{ds}.h5", dataset=ds, n_classes=6, per_class=(4, 2, 4), seed=i, noise=3.0)[0]
              for i, ds in enumerate(("caltech101", "dtd"))]
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(app, ["fit", *map(str, caches), "--heads", "zeroshot,taskres", "--shots", "2",
                                   "--seeds", "1,2", "--set", "taskres.epochs=2", "--base-to-new", "--out", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2 * 2
    assert len({r["acc"] for r in rows}) > 2  # not all 100%: the checks below compare real numbers
    res = CliRunner().invoke(app, ["table", str(out), "--format", "csv", "--names", "registry"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("head,dataset,Base mean")
    # H of the mean Base and mean New per dataset (CoCoOp), and the Average row likewise
    def mean(head, ds, classes):
        v = [r["acc"] for r in rows if r["head"] == head and r["dataset"] == ds and r["classes"] == classes]
        return sum(v) / len(v)
    cells = {tuple(line.split(",")[:2]): line.split(",") for line in lines[1:]}
    header = lines[0].split(",")
    col = {name: header.index(name) for name in ("Base mean", "New mean", "H mean")}
    for ds in ("caltech101", "dtd"):
        b, n = mean("zeroshot", ds, "base"), mean("zeroshot", ds, "new")
        line = cells[("zeroshot", ds)]
        assert float(line[col["Base mean"]]) == pytest.approx(b, abs=1e-4)
        assert float(line[col["H mean"]]) == pytest.approx(2 * b * n / (b + n), abs=1e-4)
    avg_b = (mean("taskres", "caltech101", "base") + mean("taskres", "dtd", "base")) / 2
    avg_n = (mean("taskres", "caltech101", "new") + mean("taskres", "dtd", "new")) / 2
    line = cells[("taskres (epochs=2)", "Average")]  # --set taskres.epochs=2: an override, always marked
    assert float(line[col["H mean"]]) == pytest.approx(2 * avg_b * avg_n / (avg_b + avg_n), abs=1e-4)
    md = CliRunner().invoke(app, ["table", str(out)]).output
    assert "| Base | New | H |" in md and "fallback" in md


def test_recipe_key_and_reports(tmp_path):
    from featbench.recipes import validate, write_reports

    base = dict(datasets=["caltech101"], model="tiny-vit", pretrained="none", heads=["zeroshot"], shots=[2], seeds=[1])
    assert validate(dict(base, base_to_new=True)).base_to_new is True
    assert validate(dict(base)).base_to_new is False
    with pytest.raises(FeatbenchError, match="base_to_new"):
        validate(dict(base, base_to_new="yes"))
    with pytest.raises(FeatbenchError, match="base_to_new.*eval_on"):
        validate(dict(base, base_to_new=True, eval_on=["imagenet_a"]))
    with pytest.raises(FeatbenchError, match="keeps dataset 'dtd'"):
        validate(dict(base, tables=[{"rows": "head", "cols": "dataset", "datasets": ["dtd"]}]))
    cache, _ = make_cache(tmp_path / "c.h5", n_classes=4, per_class=(4, 2, 3))
    out = tmp_path / "r.jsonl"
    run_fit([cache], heads=["zeroshot"], shots=[2], seeds=[1], out=out, progress=False, base_to_new=True)
    written = write_reports(out, tmp_path, base_to_new=True)
    assert [p.name for p in written["tables"]] == ["table-base-to-new.csv", "table-base-to-new.tex", "table-base-to-new.md"]
    assert written["plots"] == [] and "| Base | New | H |" in written["markdown"]["table-base-to-new"]


def test_capable_heads_keep_what_they_learned_on_new_classes():
    from featbench.heads import get_head_class
    from featbench.heads.prolip import ProLIP
    from featbench.heads.text_projection import TextProjection

    rng = np.random.default_rng(0)
    C, Q, D, k = 6, 12, 8, 4
    W = rng.normal(size=(Q, D)).astype(np.float32)
    pre_text = rng.normal(size=(2, C, Q)).astype(np.float32)
    Wt = rng.normal(size=(Q, D)).astype(np.float32)
    text = pre_text @ Wt
    y = np.repeat(np.arange(3), k)
    Xpre = rng.normal(size=(len(y), Q)).astype(np.float32)

    def norm(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    p = ProLIP(epochs=3).fit(Xpre, y, text=text[:, :3], extra={"image_projection": W})
    out = p.for_classes(text[:, 3:]).decision_function(Xpre)
    zs = norm(norm(text[:, 3:].astype(np.float64)).mean(0))
    np.testing.assert_allclose(out, 100.0 * norm(p.transform(Xpre).astype(np.float64)) @ zs.T, atol=1e-3)
    X = Xpre @ W
    t = TextProjection(epochs=3).fit(X, y, text=text[:, :3], extra={"text_features_pre": pre_text[:, :3],
                                                                   "text_projection": Wt})
    new = t.for_classes(text[:, 3:], extra={"text_features_pre": pre_text[:, 3:]})
    np.testing.assert_allclose(new.class_weights(), (pre_text[:, 3:] @ t.text_projection_.numpy()).mean(0), rtol=1e-5)
    assert new.decision_function(X).shape == (len(X), 3)
    for name, able in (("zeroshot", True), ("clip-adapter", True), ("prolip", True), ("text-projection", True),
                       ("coop", True), ("kgcoop", True),
                       ("taskres", False), ("tip-adapter", False), ("tip-adapter-f", False), ("linear-probe", False),
                       ("clap", False), ("gda", False), ("lp++", False)):
        assert get_head_class(name).scores_unseen_classes is able, name


def test_coop_scores_new_class_names_with_its_learned_context():
    """CoOp from "a photo of a" with 0 epochs, trained on base, is zero-shot CLIP on the new class names."""
    from featbench.encoders import Encoder
    from featbench.heads.coop import CoOp
    from featbench.texttower import TextTower

    enc = Encoder("tiny-vit", "none", "cpu")
    tower = TextTower.from_model(enc.model, enc.tokenizer)
    base_names, new_names = ["cat", "dog"], ["car", "tree", "big boat"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 32)).astype(np.float32)
    coop = CoOp(ctx_init="a photo of a", epochs=0).fit(X[:6], np.arange(6) % 2, text_tower=tower,
                                                        classnames=base_names, logit_scale=100.0)
    new = coop.for_classes(None, classnames=new_names)
    with torch.no_grad():
        ref = enc.model.encode_text(enc.tokenizer([f"a photo of a {n}." for n in new_names])).numpy()
    zs = ZeroShot().fit(X, None, text=ref[None], logit_scale=100.0)
    np.testing.assert_allclose(new.decision_function(X), zs.decision_function(X), rtol=1e-4, atol=1e-4)
    assert coop.decision_function(X).shape == (12, 2)  # the base head is untouched


@pytest.mark.slow  # a tiny-vit extraction and two CoOp fits: ~15 s on a shared CPU
def test_coop_base_to_new_end_to_end(tmp_path):
    from featbench.extract import extract
    from featbench.synthetic import make_dataset

    root = make_dataset(tmp_path / "data", "caltech101", n_classes=5, per_split=(4, 2, 2), size=32)
    cache = extract("caltech101", root, model="tiny-vit", pretrained="none", views=2, view_shots=(2,), seeds=(1,),
                    device="cpu", cache_dir=tmp_path / "cache", progress=False)
    rows = run_fit([cache], heads=["coop"], shots=[2], seeds=[1], sets={"coop.epochs": 2}, out=tmp_path / "r.jsonl",
                   progress=False, base_to_new=True)
    assert [(r["classes"], r["n_classes"], r["fallback"]) for r in rows] == [("base", 3, None), ("new", 2, None)]
