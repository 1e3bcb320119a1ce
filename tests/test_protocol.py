"""Protocol semantics: paper/val/oracle selection, the no-val-split hold-out, views, text, domain generalisation.

Also home of the small synthetic-cache builder and test heads that test_runner.py / test_cli_fit.py import.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from featbench.cache import base_attrs, write_cache
from featbench.errors import CacheContractError, FeatbenchError, FingerprintMismatch
from featbench.heads import register_head
from featbench.heads.base import Head
from featbench.protocol import (
    HOLDOUT_NOTE, NO_VIEWS_NOTE, ORACLE_NOTE, Cell, close_cached, holdout_rows, head_target,
    mean_per_class_recall, run_cell, target_columns,
)
from featbench.results import ROW_FIELDS
from featbench.fewshot import fewshot_rows


# ----------------------------------------------------------------------------------------------------
# helpers shared with the other fit-stage tests
# ----------------------------------------------------------------------------------------------------
def make_cache(path, *, dataset="caltech101", n_classes=5, dim=16, per_class=(10, 5, 6), with_val=True,
               with_text=True, n_views=3, fingerprint="fp-a", classnames=None, seed=0, train_feature_rows=None,
               means=None, noise=0.35):
    """A schema-v1 cache of Gaussian class clusters (text = class means + noise). Returns (path, means)."""
    rng = np.random.default_rng(seed)
    if means is None:
        means = rng.normal(size=(n_classes, dim)).astype(np.float32)
    n_classes, dim = means.shape
    classnames = list(classnames or [f"class_{i}" for i in range(n_classes)])
    splits = {}
    names = ["train", "val", "test"] if with_val else ["train", "test"]
    counts = dict(zip(["train", "val", "test"], per_class))
    for split in names:
        # interleave classes in a shuffled order so first-appearance order is not sorted
        labels = np.repeat(np.arange(n_classes), counts[split])
        labels = labels[rng.permutation(labels.size)]
        feats = means[labels] + noise * rng.normal(size=(labels.size, dim)).astype(np.float32)
        entry = {"paths": [f"{split}/{i:05d}.jpg" for i in range(labels.size)], "labels": labels, "features": feats}
        if split == "train" and train_feature_rows is not None:
            rows = np.asarray(sorted(train_feature_rows), dtype=np.int64)
            entry["features"] = feats[rows]
            entry["rows"] = rows
        splits[split] = entry
    text = None
    if with_text:
        text = np.stack([means + 0.05 * rng.normal(size=means.shape) for _ in range(2)]).astype(np.float32)
    views = view_rows = None
    if n_views:
        n_train = splits["train"]["labels"].size
        view_rows = np.arange(n_train) if train_feature_rows is None else np.asarray(sorted(train_feature_rows))
        base = means[splits["train"]["labels"][view_rows]]
        views = np.stack([base + noise * rng.normal(size=base.shape) for _ in range(n_views)]).astype(np.float32)
    attrs = base_attrs(model="toy", pretrained="none", dataset=dataset, embed_dim=dim, logit_scale=100.0,
                       fingerprint=fingerprint)
    write_cache(path, attrs=attrs, classnames=classnames, splits=splits, text_features=text,
                templates=["a photo of a {}.", "{}"] if with_text else None, views=views, view_rows=view_rows,
                dtype="float32")
    return Path(path), means


def digest(a) -> str:
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    return hashlib.sha1(a.tobytes()).hexdigest()[:16] + f":{a.shape}"


class NCMHead(Head):
    """Nearest class mean (cosine) with an optional blend towards the text classifier; cheap and deterministic."""

    name = "test-ncm"
    uses_views = True
    search_space = {"mix": [0.0, 0.5, 1.0], "dummy": [3, 1, 2]}

    def __init__(self, mix: float = 0.0, dummy: int = 0, scale: float = 10.0, random_state=None, device="cpu"):
        self.mix = mix
        self.dummy = dummy
        self.scale = scale
        self.random_state = random_state
        self.device = device

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None, extra=None):
        X = np.asarray(X, dtype=np.float64)
        if views is not None:
            X = np.concatenate([X, np.asarray(views, dtype=np.float64).reshape(-1, X.shape[1])])
            y = np.concatenate([y] * (1 + views.shape[0]))
        n_classes = len(classnames) if classnames is not None else int(np.max(y)) + 1
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        means = np.zeros((n_classes, X.shape[1]))
        for c in range(n_classes):
            if np.any(y == c):
                means[c] = Xn[y == c].mean(0)
        self.means_ = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        self.text_ = None
        if text is not None:
            t = np.asarray(text, dtype=np.float64)
            t = t / np.linalg.norm(t, axis=-1, keepdims=True)
            t = t.mean(0)
            self.text_ = t / np.linalg.norm(t, axis=1, keepdims=True)
        self.fit_info_ = {"selected": {}, "views_used": 0 if views is None else int(views.shape[0]), "notes": []}
        return self

    def decision_function(self, X):
        X = np.asarray(X, dtype=np.float64)
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        logits = (1 - self.mix) * Xn @ self.means_.T
        if self.text_ is not None and self.mix:
            logits = logits + self.mix * Xn @ self.text_.T
        return self.scale * logits


class RecordingHead(NCMHead):
    """Logs every array it is given (fit inputs, X_val, decision inputs), in order."""

    name = "test-recording"
    events: list = []

    def fit(self, X, y, **context):
        RecordingHead.events.append(("fit", digest(X)))
        if context.get("X_val") is not None:
            RecordingHead.events.append(("fit-X_val", digest(context["X_val"])))
        return super().fit(X, y, **context)

    def decision_function(self, X):
        RecordingHead.events.append(("decision", digest(X)))
        return super().decision_function(X)


class InternalSearchHead(RecordingHead):
    """Pretends to run a paper-defined search on X_val (like lpclip / Tip-Adapter)."""

    name = "test-internal"
    searches_internally = True
    search_space = {}

    def fit(self, X, y, **context):
        super().fit(X, y, **context)
        if context.get("X_val") is None:
            raise FeatbenchError("test-internal needs X_val")
        self.fit_info_["selected"] = {"found": 42}
        return self


class TextHead(NCMHead):
    name = "test-text"
    needs_text = True
    uses_views = False
    search_space = {}


TEST_HEADS = {
    "test-ncm": "test_protocol:NCMHead",
    "test-recording": "test_protocol:RecordingHead",
    "test-internal": "test_protocol:InternalSearchHead",
    "test-text": "test_protocol:TextHead",
}


@pytest.fixture
def test_heads():
    """Register the test heads (module importable as `test_protocol` from workers too) and unregister after."""
    import featbench.heads as H

    for name, target in TEST_HEADS.items():
        register_head(name, target)
    RecordingHead.events.clear()
    yield
    for name in TEST_HEADS:
        H._REGISTRY.pop(name, None)
    close_cached()


def cell(cache, head="test-ncm", **kw) -> Cell:
    return Cell(cache=str(cache), head=head, head_target=TEST_HEADS.get(head) or head_target(head), **kw)


# ----------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------
def test_paper_row_has_every_field(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "c.h5")
    rows = run_cell(cell(path, shots=4, seed=1))
    assert len(rows) == 1
    row = rows[0]
    assert set(ROW_FIELDS) <= set(row)
    assert row["protocol"] == "paper" and row["dataset"] == row["source_dataset"] == "caltech101"
    assert row["params"] == {"mix": 0.0, "dummy": 0, "scale": 10.0}  # no device / random_state
    assert row["selected"] == {} and row["views_used"] == 3 and row["n_test"] == 30
    assert row["acc"] > 80 and 0 <= row["mean_per_class_recall"] <= 100
    assert row["fingerprint"] == "fp-a" and row["model"] == "toy" and row["cache"] == str(path)


def test_val_protocol_never_reads_test(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "c.h5")
    from featbench.cache import Cache

    with Cache(path) as c:
        test_d = digest(c.features("test"))
        sub = fewshot_rows(c.labels("train"), c.labels("val"), 2, 1)
        val_d = digest(c.features("val", sub.val))
    rows = run_cell(cell(path, head="test-recording", protocol="val", shots=2, seed=1))
    ev = RecordingHead.events
    fits = [i for i, e in enumerate(ev) if e[0] == "fit"]
    assert len(fits) == 9  # 3 mix x 3 dummy
    test_uses = [i for i, e in enumerate(ev) if e[1] == test_d]
    assert test_uses and min(test_uses) > max(fits)  # test is only touched after selection, once
    assert len(test_uses) == 1
    assert sum(e == ("decision", val_d) for e in ev) == 9
    row = rows[0]
    assert row["params"]["mix"] == "searched" and row["params"]["dummy"] == "searched"
    assert set(row["selected"]) == {"mix", "dummy"}
    assert ORACLE_NOTE not in row["notes"]


def test_val_search_ties_pick_first_and_respect_fixed(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "c.h5")
    # `dummy` never changes predictions: every setting ties, the first in search_space order wins
    rows = run_cell(cell(path, protocol="val", shots=2, seed=1, overrides={"mix": 0.0}))
    assert rows[0]["selected"] == {"dummy": 3}
    assert rows[0]["params"]["mix"] == 0.0 and rows[0]["params"]["dummy"] == "searched"


def test_oracle_selects_on_test_and_is_marked(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "c.h5")
    from featbench.cache import Cache

    with Cache(path) as c:
        test_d = digest(c.features("test"))
    rows = run_cell(cell(path, head="test-recording", protocol="oracle", shots=2, seed=1, overrides={"dummy": 0}))
    ev = RecordingHead.events
    assert sum(e == ("decision", test_d) for e in ev) == 3 + 1  # 3 mix settings + the final evaluation
    assert rows[0]["protocol"] == "oracle" and ORACLE_NOTE in rows[0]["notes"]


def test_paper_gives_val_only_to_internal_searchers(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "c.h5")
    from featbench.cache import Cache

    with Cache(path) as c:
        test_d = digest(c.features("test"))
        sub = fewshot_rows(c.labels("train"), c.labels("val"), 4, 2)
        val_d = digest(c.features("val", sub.val))
    run_cell(cell(path, head="test-recording", shots=4, seed=2))
    assert not any(e[0] == "fit-X_val" for e in RecordingHead.events)
    RecordingHead.events.clear()
    rows = run_cell(cell(path, head="test-internal", shots=4, seed=2))
    assert ("fit-X_val", val_d) in RecordingHead.events
    assert [e for e in RecordingHead.events if e[1] == test_d] == [("decision", test_d)]
    assert rows[0]["selected"] == {"found": 42}


def test_holdout_selection_without_val_split(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "imagenet.h5", dataset="imagenet", with_val=False, per_class=(12, 0, 6))
    rows = run_cell(cell(path, head="test-internal", shots=2, seed=3))
    assert HOLDOUT_NOTE in rows[0]["notes"]
    rows_v = run_cell(cell(path, protocol="val", shots=2, seed=3))
    assert HOLDOUT_NOTE in rows_v[0]["notes"]
    from featbench.cache import Cache

    with Cache(path) as c:
        labels = c.labels("train")
    sub = fewshot_rows(labels, None, 8, 3)
    held = holdout_rows(labels, sub.train, 8, 3)
    assert held == holdout_rows(labels, sub.train, 8, 3)  # deterministic
    assert not set(held) & set(sub.train)
    counts = np.bincount(labels[held], minlength=5)
    assert (counts == 4).all()  # min(K, 4) per class


def test_holdout_rows_without_features_is_a_clear_error(tmp_path, test_heads):
    labels_path, _ = make_cache(tmp_path / "full.h5", dataset="imagenet", with_val=False, per_class=(12, 0, 6), n_views=0)
    from featbench.cache import Cache

    with Cache(labels_path) as c:
        sub = fewshot_rows(c.labels("train"), None, 2, 1)
    path, _ = make_cache(tmp_path / "sub.h5", dataset="imagenet", with_val=False, per_class=(12, 0, 6), n_views=0,
                         train_feature_rows=sub.train)
    assert run_cell(cell(path, shots=2, seed=1))[0]["acc"] >= 0  # paper + no search: fine
    with pytest.raises(FeatbenchError, match="held-out train rows"):
        run_cell(cell(path, head="test-internal", shots=2, seed=1))


def test_missing_views_are_noted(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "c.h5", n_views=0)
    row = run_cell(cell(path, shots=2, seed=1))[0]
    assert row["views_used"] == 0 and NO_VIEWS_NOTE in row["notes"]


def test_text_head_without_text_names_cache_and_head(tmp_path, test_heads):
    path, _ = make_cache(tmp_path / "notext.h5", with_text=False)
    with pytest.raises(FeatbenchError, match=r"test-text.*notext\.h5"):
        run_cell(cell(path, head="test-text", shots=1, seed=1))


def test_domain_generalisation_restricts_to_target_classes(tmp_path, test_heads):
    rng = np.random.default_rng(5)
    means = rng.normal(size=(10, 16)).astype(np.float32)
    src, _ = make_cache(tmp_path / "src.h5", dataset="imagenet", means=means, with_val=False, per_class=(8, 0, 4))
    keep = [7, 2, 5, 0]  # a 4-class target, classes in a different order
    tgt, _ = make_cache(tmp_path / "tgt.h5", dataset="imagenet_a", means=means[keep], with_val=False,
                        per_class=(1, 0, 10), classnames=[f"class_{i}" for i in keep], n_views=0, seed=9)
    rows = run_cell(cell(src, shots=4, seed=1, eval_on=(str(tgt),)))
    assert len(rows) == 1
    row = rows[0]
    assert row["dataset"] == "imagenet_a" and row["source_dataset"] == "imagenet" and row["cache"] == str(tgt)
    assert row["n_test"] == 40
    # the same numbers by hand: fit on the source, logits restricted to the kept columns
    from featbench.cache import Cache

    head = NCMHead()
    with Cache(src) as s, Cache(tgt) as t:
        sub = fewshot_rows(s.labels("train"), None, 4, 1)
        head.fit(s.features("train", sub.train), s.labels("train")[sub.train], views=s.views(sub.train),
                 classnames=s.classnames, text=s.text_features())
        pred = head.decision_function(t.features("test"))[:, keep].argmax(1)
        y = t.labels("test")
    assert row["acc"] == pytest.approx((pred == y).mean() * 100)


def test_domain_generalisation_refusals(tmp_path, test_heads):
    src, means = make_cache(tmp_path / "src.h5", dataset="imagenet", with_val=False, per_class=(8, 0, 4))
    other, _ = make_cache(tmp_path / "other.h5", dataset="imagenet_v2", means=means, with_val=False,
                          per_class=(1, 0, 4), fingerprint="fp-b")
    with pytest.raises(FingerprintMismatch):
        run_cell(cell(src, shots=1, seed=1, eval_on=(str(other),)))
    with pytest.raises(FeatbenchError, match="not classes of the source"):
        target_columns(["a", "b"], ["b", "zebra"], "src.h5", "tgt.h5")
    assert target_columns(["great_white shark", "b"], ["b", "Great White Shark"], "s", "t").tolist() == [1, 0]


def test_mean_per_class_recall_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0])
    assert mean_per_class_recall(pred, y) == pytest.approx((0.75 + 0.5) / 2 * 100)


def test_real_zeroshot_head_matches_hand_computation(tmp_path):
    pytest.importorskip("featbench.heads.zeroshot")
    path, _ = make_cache(tmp_path / "c.h5")
    rows = run_cell(Cell(cache=str(path), head="zeroshot", head_target=head_target("zeroshot"), shots=1, seed=1))
    from featbench.cache import Cache

    with Cache(path) as c:
        t = c.text_features()
        t = t / np.linalg.norm(t, axis=-1, keepdims=True)
        w = t.mean(0)
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        X = c.features("test")
        pred = (X @ w.T).argmax(1)
        acc = (pred == c.labels("test")).mean() * 100
    assert rows[0]["acc"] == pytest.approx(acc)
    assert rows[0]["params"] == {} and rows[0]["views_used"] == 0
    close_cached()


def test_malformed_cache_is_a_contract_error(tmp_path, test_heads):
    import h5py

    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["featbench_schema"] = 1
    with pytest.raises(CacheContractError, match="missing root attribute"):
        run_cell(cell(bad, shots=1, seed=1))


def test_taskres_on_a_searching_base_gets_the_selection_split(tmp_path):
    """TaskRes* with base=linear-probe: the base's lpclip C search runs on val and is recorded."""
    from featbench.runner import run_fit

    cache, _ = make_cache(tmp_path / "c.h5")
    rows = run_fit([cache], heads=["taskres"], shots=[2], seeds=[1], protocol="paper",
                   sets={"taskres.base": "linear-probe", "taskres.epochs": 2}, out=tmp_path / "r.jsonl", progress=False)
    assert len(rows) == 1
    assert "base.C" in rows[0]["selected"]
