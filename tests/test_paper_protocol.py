"""`--protocol paper` follows each head's reference code: its selection split, templates, view set, class names.

Also pins reference behaviour that is cheap to pin: CLAP's batches per epoch (Dassl drop_last), LP++'s best-val
step, and TaskRes*'s base from a Dassl checkpoint (a tuned text projection).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from featbench.cache import Cache, base_attrs, write_cache
from featbench.errors import FeatbenchError
from featbench.fewshot import fewshot_rows, holdout_rows
from featbench.heads import get_head, register_head
from featbench.heads.paper import (DASSL_SCALE, FULL_VAL, IMAGENET_SELECT_TEMPLATES, IMAGENET_TEMPLATES_8,
                                   KSHOT_VAL, TEMPLATES_7, TEMPLATES_8, TIP_SCALE)
from featbench.paper_setup import pick_templates
from featbench.protocol import FULL_VAL_NOTE, KSHOT_VAL_NOTE, ORACLE_NOTE, Cell, close_cached, run_cell
from test_protocol import NCMHead, digest


# ----------------------------------------------------------------------------------------------------
# a cache with ImageNet's 8 templates, two view sets and a classname style; heads that record their inputs
# ----------------------------------------------------------------------------------------------------
def make_cache(path, *, dataset="caltech101", n_classes=4, dim=8, per_class=(10, 6, 5), with_val=True,
               templates=IMAGENET_TEMPLATES_8, scales=(TIP_SCALE, DASSL_SCALE), n_views=3, style="clean", seed=0,
               pre_dim=None):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dim)).astype(np.float32)
    proj = rng.normal(size=(pre_dim, dim)).astype(np.float32) / np.sqrt(pre_dim) if pre_dim else None
    splits = {}
    for split, k in zip(("train", "val", "test"), per_class):
        if split == "val" and not with_val:
            continue
        labels = np.repeat(np.arange(n_classes), k)
        labels = labels[rng.permutation(labels.size)]
        feats = means[labels] + 0.4 * rng.normal(size=(labels.size, dim)).astype(np.float32)
        splits[split] = {"paths": [f"{split}/{i}.jpg" for i in range(labels.size)], "labels": labels, "features": feats}
        if pre_dim:  # pre-projection features whose projection is the stored features
            pre = feats @ np.linalg.pinv(proj)
            splits[split]["features_pre"] = pre.astype(np.float32)
            splits[split]["features"] = (pre @ proj).astype(np.float32)
    text = np.stack([means + 0.1 * (t + 1) * rng.normal(size=means.shape) for t in range(len(templates))]).astype(np.float32)
    n_train = splits["train"]["labels"].size
    base = means[splits["train"]["labels"]]
    sets = [np.stack([base + 0.4 * rng.normal(size=base.shape) for _ in range(n_views)]).astype(np.float32)
            for _ in scales]
    attrs = base_attrs(model="toy", pretrained="none", dataset=dataset, embed_dim=dim, logit_scale=100.0,
                       fingerprint="fp", preprocess={"classname_style": style})
    more = {f"views_{i + 1}": (v, sc) for i, (v, sc) in enumerate(zip(sets[1:], scales[1:]), start=1)}
    write_cache(path, attrs=attrs, classnames=[f"class_{i}" for i in range(n_classes)], splits=splits,
                text_features=text, templates=list(templates), views=sets[0] if sets else None,
                view_rows=np.arange(n_train) if sets else None, view_scale=scales[0] if scales else None,
                more_views=more, dtype="float32", extra={"/model/image_projection": proj} if pre_dim else None)
    return path


class Recorder(NCMHead):
    """Records the text, views and selection split it is given."""

    name = "test-paper-rec"
    search_space = {}
    seen: dict = {}

    def fit(self, X, y, **context):
        Recorder.seen = {k: (None if context.get(k) is None else np.asarray(context[k]).copy())
                         for k in ("text", "views", "X_val", "y_val")}
        return super().fit(X, y, **context)


class SevenTemplates(Recorder):
    name = "test-seven"
    paper_templates = TEMPLATES_7
    paper_view_scale = DASSL_SCALE
    paper_classname_style = "raw"


class FullVal(Recorder):
    name = "test-fullval"
    searches_internally = True
    paper_selection = FULL_VAL
    paper_view_scale = TIP_SCALE
    reference_selects_on_test = ("imagenet",)


class KShotVal(Recorder):
    name = "test-kshot"
    searches_internally = True
    paper_selection = KSHOT_VAL


HEADS = {"test-paper-rec": Recorder, "test-seven": SevenTemplates, "test-fullval": FullVal, "test-kshot": KShotVal}


@pytest.fixture
def heads():
    import featbench.heads as H

    for name, cls in HEADS.items():
        register_head(name, f"test_paper_protocol:{cls.__name__}")
    yield
    for name in HEADS:
        H._REGISTRY.pop(name, None)
    close_cached()


def cell(path, head, **kw) -> Cell:
    return Cell(cache=str(path), head=head, head_target=f"test_paper_protocol:{HEADS[head].__name__}", **kw)


# ----------------------------------------------------------------------------------------------------
# templates, views, class names
# ----------------------------------------------------------------------------------------------------
def test_template_subset_is_the_papers_by_string(tmp_path, heads):
    path = make_cache(tmp_path / "in.h5", dataset="imagenet", with_val=False, per_class=(12, 0, 5))
    with Cache(path) as c:
        text = c.text_features()
    row = run_cell(cell(path, "test-seven", shots=2, seed=1))[0]
    np.testing.assert_array_equal(Recorder.seen["text"], text[:7])  # the 7 "select", without "a photo of a {}."
    assert any(n.startswith("templates: the paper's 7 of the cache's 8") and "a photo of a {}." in n for n in row["notes"])
    run_cell(cell(path, "test-paper-rec", shots=2, seed=1))  # no declaration: all 8
    np.testing.assert_array_equal(Recorder.seen["text"], text)
    # a reordered cache: selected by string, in the paper's order
    order = [7, 3, 0, 1, 2, 6, 4, 5]
    other = make_cache(tmp_path / "in2.h5", dataset="imagenet", with_val=False, per_class=(12, 0, 5),
                       templates=[IMAGENET_TEMPLATES_8[i] for i in order])
    with Cache(other) as c:
        text2, tmpl2 = c.text_features(), c.templates
    run_cell(cell(other, "test-seven", shots=2, seed=1))
    np.testing.assert_array_equal(Recorder.seen["text"], text2[[tmpl2.index(t) for t in IMAGENET_SELECT_TEMPLATES]])
    # the 8-template heads take all 8 of an 8-template cache; other datasets keep their own template
    assert TEMPLATES_8["imagenet"] == IMAGENET_TEMPLATES_8 and "caltech101" not in TEMPLATES_7


def test_missing_paper_templates_fall_back_with_a_note(tmp_path, heads):
    path = make_cache(tmp_path / "one.h5", dataset="imagenet", with_val=False, per_class=(12, 0, 5),
                      templates=["a photo of a {}."])
    row = run_cell(cell(path, "test-seven", shots=1, seed=1))[0]
    assert Recorder.seen["text"].shape[0] == 1
    assert any("templates: the cache lacks 7 of the paper's 7" in n for n in row["notes"])


def test_each_head_gets_its_papers_view_set(tmp_path, heads):
    path = make_cache(tmp_path / "c.h5")
    with Cache(path) as c:
        assert c.view_sets() == {"views": TIP_SCALE, "views_2": DASSL_SCALE}
        sub = fewshot_rows(c.labels("train"), c.labels("val"), 2, 1)
        tip, dassl = c.views(sub.train, kind="views"), c.views(sub.train, kind="views_2")
    row = run_cell(cell(path, "test-seven", shots=2, seed=1))[0]  # Dassl scale
    np.testing.assert_array_equal(Recorder.seen["views"], dassl)
    assert row["views_used"] == 3 and row["views_scale"] == [0.08, 1.0]
    row = run_cell(cell(path, "test-fullval", shots=2, seed=1))[0]  # Tip scale
    np.testing.assert_array_equal(Recorder.seen["views"], tip)
    assert row["views_scale"] == [0.5, 1.0]
    # a cache with one (Tip) set: the Dassl head falls back to it, and says so
    single = make_cache(tmp_path / "s.h5", scales=(TIP_SCALE,))
    row = run_cell(cell(single, "test-seven", shots=2, seed=1))[0]
    assert row["views_scale"] == [0.5, 1.0]
    assert any("none at the paper's crop scale [0.08, 1.0]" in n for n in row["notes"])


def test_classname_style_difference_is_noted(tmp_path, heads):
    path = make_cache(tmp_path / "c.h5", style="clean")
    row = run_cell(cell(path, "test-seven", shots=1, seed=1))[0]  # the paper keeps underscores
    assert any("class names: cache style 'clean'" in n and "--classname-style raw" in n for n in row["notes"])
    raw = make_cache(tmp_path / "r.h5", style="raw")
    assert not any("class names" in n for n in run_cell(cell(raw, "test-seven", shots=1, seed=1))[0]["notes"])


# ----------------------------------------------------------------------------------------------------
# selection splits
# ----------------------------------------------------------------------------------------------------
def test_paper_selection_splits(tmp_path, heads):
    path = make_cache(tmp_path / "c.h5", per_class=(12, 9, 5))
    with Cache(path) as c:
        train_labels, val_labels, val = c.labels("train"), c.labels("val"), c.features("val")
        few = fewshot_rows(train_labels, val_labels, 8, 2)
        kshot = fewshot_rows(train_labels, val_labels, 8, 2, val_per_class=8)
        test_d = digest(c.features("test"))
    assert kshot.train == few.train and len(kshot.val) == 8 * 4 and len(few.val) == 4 * 4
    row = run_cell(cell(path, "test-fullval", shots=8, seed=2))[0]  # Tip-Adapter / GDA: every val image
    np.testing.assert_array_equal(Recorder.seen["X_val"], val)
    assert FULL_VAL_NOTE in row["notes"]
    row = run_cell(cell(path, "test-kshot", shots=8, seed=2))[0]  # LP++ / ProLIP: K per class
    np.testing.assert_array_equal(Recorder.seen["X_val"], val[kshot.val])
    assert KSHOT_VAL_NOTE in row["notes"]
    run_cell(cell(path, "test-fullval", protocol="val", shots=8, seed=2))  # `val` stays CoOp's min(K, 4)
    np.testing.assert_array_equal(Recorder.seen["X_val"], val[few.val])
    row = run_cell(cell(path, "test-fullval", protocol="oracle", shots=8, seed=2))[0]
    assert digest(Recorder.seen["X_val"]) == test_d and ORACLE_NOTE in row["notes"]


def test_imagenet_selection_uses_held_out_train_rows(tmp_path, heads):
    path = make_cache(tmp_path / "in.h5", dataset="imagenet", with_val=False, per_class=(14, 0, 5))
    with Cache(path) as c:
        labels, train = c.labels("train"), c.features("train")
        test_d = digest(c.features("test"))
    sub = fewshot_rows(labels, None, 4, 1)
    row = run_cell(cell(path, "test-kshot", shots=4, seed=1))[0]  # K held-out rows per class (LP++'s script)
    held = holdout_rows(labels, sub.train, 4, 1, per_class=4)
    np.testing.assert_array_equal(Recorder.seen["X_val"], train[held])
    assert not set(held) & set(sub.train) and (np.bincount(labels[held]) == 4).all()
    from featbench.fewshot import union_rows

    covered, _ = union_rows(labels, None, [4], [1], with_holdout=True)  # `--train-rows fewshot` extracts them
    assert set(held) <= set(covered.tolist())
    assert any("K per class" in n for n in row["notes"])
    row = run_cell(cell(path, "test-fullval", shots=4, seed=1))[0]  # full val does not exist: min(K, 4) held out
    np.testing.assert_array_equal(Recorder.seen["X_val"], train[holdout_rows(labels, sub.train, 4, 1)])
    assert any("the reference selects on test for imagenet" in n for n in row["notes"])
    row = run_cell(cell(path, "test-fullval", protocol="oracle", shots=4, seed=1))[0]  # what the reference did
    assert digest(Recorder.seen["X_val"]) == test_d
    assert "oracle reproduces the reference, which selects on the test split for imagenet" in row["notes"]


def test_full_val_without_features_is_a_clear_error(tmp_path, heads):
    import h5py

    path = make_cache(tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:  # keep features for half of the val rows only
        g = f["splits"]["val"]
        feats = g["features"][()]
        del g["features"]
        g.create_dataset("features", data=feats[::2])
        g.create_dataset("rows", data=np.arange(0, feats.shape[0], 2))
    with pytest.raises(FeatbenchError, match="full val split"):
        run_cell(cell(path, "test-fullval", shots=1, seed=1))
    from featbench.runner import run_fit

    with pytest.raises(FeatbenchError, match="full val split"):
        run_fit([path], heads=["test-fullval"], shots=[1], seeds=[1], out=tmp_path / "r.jsonl", progress=False)


def test_real_heads_declare_their_papers_setup():
    from featbench.heads import get_head_class

    sel = {n: get_head_class(n).paper_selection for n in ("linear-probe", "tip-adapter", "tip-adapter-f", "gda", "lp++", "prolip")}
    assert sel == {"linear-probe": "fewshot_val", "tip-adapter": FULL_VAL, "tip-adapter-f": FULL_VAL, "gda": FULL_VAL,
                   "lp++": KSHOT_VAL, "prolip": KSHOT_VAL}
    assert get_head_class("prolip").paper_search and not get_head_class("tip-adapter").paper_search
    for name in ("taskres", "clap"):
        cls = get_head_class(name)
        assert cls.paper_templates == TEMPLATES_8 and cls.paper_classname_style == "raw" and cls.paper_view_scale == DASSL_SCALE
    for name in ("tip-adapter", "gda", "lp++", "prolip"):
        cls = get_head_class(name)
        assert cls.paper_templates == TEMPLATES_7 and cls.paper_view_scale == TIP_SCALE
    assert get_head_class("tip-adapter-f").paper_view_scale == TIP_SCALE  # its training crops too (main.py)
    assert get_head("prolip").lr == 1e-5


def test_kgcoop_imagenet_classifier_uses_its_single_template():
    """KgCoOp's CUSTOM_TEMPLATES["ImageNet"] is "a photo of a {}." alone, not the cache's 8-template ensemble."""
    from featbench.heads import get_head_class

    cls = get_head_class("kgcoop")
    shuffled = list(IMAGENET_TEMPLATES_8[::-1])
    idx, note = pick_templates(cls, "imagenet", shuffled)
    assert [shuffled[i] for i in idx] == ["a photo of a {}."]
    assert note.startswith("templates: the paper's 1 of the cache's 8")
    assert pick_templates(cls, "imagenet", ["a photo of a {}."]) == (None, None)
    assert pick_templates(cls, "caltech101", ["a photo of a {}."]) == (None, None)


def test_prolip_paper_protocol_searches_its_grid_on_kshot_val(tmp_path, monkeypatch):
    """ProLIP's Table 1: lr x lambda searched on K val images per class, first best, recorded as selected."""
    from featbench.heads.prolip import ProLIP
    from featbench.protocol import planned_params
    from featbench.protocol import head_target

    monkeypatch.setattr(ProLIP, "search_space", {"lr": [1e-2, 1e-4], "lam": [1.0, 0.0]})
    path = make_cache(tmp_path / "c.h5", per_class=(10, 8, 5), pre_dim=12, scales=())
    c = Cell(cache=str(path), head="prolip", head_target=head_target("prolip"), shots=4, seed=1,
             overrides={"epochs": 3})
    assert planned_params(c, "caltech101")["lr"] == "searched"
    with Cache(path) as cache:
        sub = fewshot_rows(cache.labels("train"), cache.labels("val"), 4, 1, val_per_class=4)
        kval = digest(cache.features("val", sub.val, kind="features_pre"))
    fitted, scored = [], []
    real_fit, real_df = ProLIP.fit, ProLIP.decision_function

    def spy_fit(self, X, y, **ctx):
        fitted.append((self.lr, self.lam))
        return real_fit(self, X, y, **ctx)

    def spy_df(self, X):
        scored.append(digest(X))
        return real_df(self, X)

    monkeypatch.setattr(ProLIP, "fit", spy_fit)
    monkeypatch.setattr(ProLIP, "decision_function", spy_df)
    row = run_cell(c)[0]
    assert fitted == [(1e-2, 1.0), (1e-2, 0.0), (1e-4, 1.0), (1e-4, 0.0)]  # lr outer, as the reference
    assert scored[:4] == [kval] * 4  # each scored on K val images per class
    assert set(row["selected"]) == {"lr", "lam"} and KSHOT_VAL_NOTE in row["notes"]  # searched by the runner
    close_cached()


# ----------------------------------------------------------------------------------------------------
# reference behaviour of the heads
# ----------------------------------------------------------------------------------------------------
def test_clap_epoch_has_floor_n_over_batch_batches(monkeypatch):
    import torch.nn.functional as Fn

    from featbench.heads.clap import clap_batches_per_epoch

    assert [clap_batches_per_epoch(n, 256) for n in (100, 255, 256, 511, 512, 1000)] == [1, 1, 1, 1, 2, 3]
    rng = np.random.default_rng(0)
    n_classes, dim, n = 5, 8, 60
    text = rng.normal(size=(1, n_classes, dim)).astype(np.float32)
    y = np.arange(n) % n_classes
    X = (text[0][y] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    calls = []
    real = Fn.cross_entropy
    monkeypatch.setattr(Fn, "cross_entropy", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    get_head("clap", epochs=2, batch_size=16).fit(X, y, text=text)  # 60 images, batch 16: 3 batches, not 4
    assert len(calls) == 2 * 3
    calls.clear()
    get_head("clap", epochs=2, batch_size=100).fit(X, y, text=text)  # fewer images than a batch: one batch
    assert len(calls) == 2


def test_lpplusplus_keeps_the_best_val_step_later_ties():
    rng = np.random.default_rng(1)
    n_classes, dim = 6, 16
    means = rng.normal(size=(n_classes, dim)).astype(np.float32)
    text = (means + 0.8 * rng.normal(size=means.shape)).astype(np.float32)[None]
    y = np.repeat(np.arange(n_classes), 2)
    X = (means[y] + 0.9 * rng.normal(size=(y.size, dim))).astype(np.float32)
    yv = np.repeat(np.arange(n_classes), 3)
    Xv = (means[yv] + 0.9 * rng.normal(size=(yv.size, dim))).astype(np.float32)
    n_iter = 25
    accs = []
    for s in range(1, n_iter + 1):  # the iterate after step s, by refitting s steps without selection
        h = get_head("lp++", n_iter=s, select_iter_on_val=False).fit(X, y, text=text)
        accs.append(h.score(Xv, yv))
    best = max(i for i, a in enumerate(accs, start=1) if a == max(accs))  # `acc_val >= best_acc`: ties go later
    picked = get_head("lp++", n_iter=n_iter).fit(X, y, text=text, X_val=Xv, y_val=yv)
    assert picked.fit_info_["selected"] == {"n_iter": best}
    again = get_head("lp++", n_iter=best, select_iter_on_val=False).fit(X, y, text=text)
    np.testing.assert_allclose(picked.decision_function(Xv), again.decision_function(Xv), rtol=1e-5, atol=1e-5)
    last = get_head("lp++", n_iter=n_iter).fit(X, y, text=text)  # no selection split: last iterate, noted
    assert last.fit_info_["selected"] == {} and any("last iterate" in n for n in last.fit_info_["notes"])


def test_lpplusplus_trains_on_one_augmented_view():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(1, 3, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 2)
    X = (text[0][y] + 0.3 * rng.normal(size=(6, 8))).astype(np.float32)
    views = (X[None] + 0.3 * rng.normal(size=(4, 6, 8))).astype(np.float32)
    with_views = get_head("lp++", n_iter=5).fit(X, y, text=text, views=views)
    on_first = get_head("lp++", n_iter=5).fit(views[0], y, text=text)
    assert with_views.fit_info_["views_used"] == 1
    np.testing.assert_allclose(with_views.W_.numpy(), on_first.W_.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# TaskRes* from a Dassl checkpoint (the authors' published enhanced bases)
# ----------------------------------------------------------------------------------------------------
class _NotAllowed:  # pickling this needs code: weights_only loading must refuse it
    pass


def test_taskres_base_from_a_dassl_checkpoint(tmp_path):
    import torch

    from featbench.heads.taskres import TaskRes

    rng = np.random.default_rng(3)
    T, C, Q, D = 3, 5, 12, 8
    pre = rng.normal(size=(T, C, Q)).astype(np.float32)
    weight = rng.normal(size=(D, Q)).astype(np.float32)  # nn.Linear(Q, D).weight, as TaskRes saves it
    y = np.repeat(np.arange(C), 2)
    X = rng.normal(size=(y.size, D)).astype(np.float32)
    ckpt = tmp_path / "model.pth.tar"
    torch.save({"state_dict": {"weight": torch.from_numpy(weight)}, "epoch": 200,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, ckpt)
    text = rng.normal(size=(T, C, D)).astype(np.float32)
    head = TaskRes(base=str(ckpt), epochs=0).fit(X, y, text=text, extra={"text_features_pre": pre})
    np.testing.assert_allclose(head.W0_.numpy(), pre.mean(0) @ weight.T, rtol=1e-5, atol=1e-5)  # not rescaled
    assert head.fit_info_["base"].startswith("Dassl checkpoint")
    transposed = tmp_path / "proj.pth.tar"  # the projection itself, [Q, D]
    torch.save({"state_dict": {"weight": torch.from_numpy(weight.T.copy())}}, transposed)
    head_t = TaskRes(base=str(transposed), epochs=0).fit(X, y, text=text, extra={"text_features_pre": pre})
    np.testing.assert_allclose(head_t.W0_.numpy(), head.W0_.numpy(), rtol=1e-5, atol=1e-5)

    def err(path, extra={"text_features_pre": pre}):
        with pytest.raises(FeatbenchError) as info:
            TaskRes(base=str(path), epochs=0).fit(X, y, text=text, extra=extra)
        msg = str(info.value)
        assert "\n" not in msg and "taskres.base" in msg
        return msg

    assert "pre-projection" in err(ckpt, extra={})
    wrong = tmp_path / "wrong.pth.tar"
    torch.save({"state_dict": {"weight": torch.zeros(D + 1, Q)}}, wrong)
    assert "shape" in err(wrong)
    nan = tmp_path / "nan.pth.tar"
    torch.save({"state_dict": {"weight": torch.full((D, Q), float("nan"))}}, nan)
    assert "NaN" in err(nan)
    other = tmp_path / "other.pth.tar"
    torch.save({"state_dict": {"bias": torch.zeros(D)}}, other)
    assert "state_dict['weight']" in err(other)
    text_file = tmp_path / "notes.pth.tar"
    text_file.write_text("not a checkpoint")
    assert "not a readable torch file" in err(text_file)
    # a full Dassl checkpoint pickles its optimizer and scheduler objects: they load as inert stubs
    import sys
    import types

    fake = ["dassl", "dassl.optim", "dassl.optim.lr_scheduler"]
    for name in fake:
        sys.modules[name] = types.ModuleType(name)
    warmup_cls = type("ConstantWarmupScheduler", (), {"__module__": "dassl.optim.lr_scheduler"})
    sys.modules["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = warmup_cls
    try:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        warmup = warmup_cls()
        warmup.successor = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
        full = tmp_path / "full.pth.tar"
        torch.save({"state_dict": {"weight": torch.from_numpy(weight)}, "optimizer": opt.state_dict(),
                    "scheduler": {"successor": warmup.successor, "warmup": warmup}}, full)
    finally:
        for name in fake:
            sys.modules.pop(name, None)
    head_full = TaskRes(base=str(full), epochs=0).fit(X, y, text=text, extra={"text_features_pre": pre})
    np.testing.assert_allclose(head_full.W0_.numpy(), head.W0_.numpy(), rtol=1e-6)
    code = tmp_path / "code.pth.tar"
    torch.save({"state_dict": {"weight": torch.from_numpy(weight)}, "extra": _NotAllowed()}, code)
    assert "pickled code" in err(code)


# ----------------------------------------------------------------------------------------------------
# extraction of several view sets
# ----------------------------------------------------------------------------------------------------
def test_extract_two_view_sets(tmp_path):
    pytest.importorskip("open_clip")
    from featbench.extract import extract, parse_view_scales
    from featbench.synthetic import make_dataset

    assert parse_view_scales("0.5,1:0.08,1") == ((0.5, 1.0), (0.08, 1.0))
    with pytest.raises(FeatbenchError, match="each scale once"):
        parse_view_scales("0.5,1:0.5,1")
    root = make_dataset(tmp_path / "data", "caltech101", n_classes=2, per_split=(3, 1, 1), size=32)
    fast = dict(model="tiny-vit", pretrained="none", device="cpu", views=2, view_shots=(1,), seeds=(1,),
                batch_size=4, progress=False, splits=("train", "test"))
    one = extract("caltech101", root, out=tmp_path / "one.h5", **fast)
    two = extract("caltech101", root, out=tmp_path / "two.h5", view_scales="0.5,1:0.08,1", **fast)
    with Cache(one) as a, Cache(two) as b:
        assert a.view_sets() == {"views": (0.5, 1.0)}
        assert b.view_sets() == {"views": (0.5, 1.0), "views_2": (0.08, 1.0)}
        np.testing.assert_array_equal(a.views(), b.views())  # the first set is the single-scale cache's views
        assert not np.array_equal(b.views(kind="views"), b.views(kind="views_2"))
        assert b.preprocess["view_scales"] == [[0.5, 1.0], [0.08, 1.0]] and "view_scales" not in a.preprocess
        assert json.loads(json.dumps(b.extraction))["view_scales"] == [[0.5, 1.0], [0.08, 1.0]]
