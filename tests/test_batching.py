"""Batched multi-run fitting: stacked runs (seeds, search points) give the rows of one-at-a-time fits."""

import numpy as np
import pytest

from featbench.batching import cell_groups, fit_all
from featbench.heads.clap import CLAP
from featbench.heads.tip_adapter import TipAdapterF

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _runs(n=3, C=5, D=12, K=4, V=3):
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        t = rng.normal(size=(C, D))
        text = (3 * t)[None].astype(np.float32)
        y = np.repeat(np.arange(C), K)
        X = (t[y] + rng.normal(size=(len(y), D))).astype(np.float32)
        views = (X[None] + 0.5 * rng.normal(size=(V,) + X.shape)).astype(np.float32)
        yv = np.repeat(np.arange(C), 2)
        Xv = (t[yv] + rng.normal(size=(len(yv), D))).astype(np.float32)
        Xt = (t[np.repeat(np.arange(C), 10)] + rng.normal(size=(10 * C, D))).astype(np.float32)
        out.append((X, y, dict(text=text, views=views, X_val=Xv, y_val=yv), Xt))
    return out


@pytest.mark.parametrize("make", [
    lambda s, a: TipAdapterF(epochs=3, batch_size=8, lr=1e-2, alpha=a, random_state=s, search_steps=(20, 10)),
    lambda s, a: CLAP(epochs=4, batch_size=8, lr=0.05, lambda_scale=a, random_state=s),
])
def test_stacked_heads_equal_one_at_a_time(make):
    runs = _runs()
    fits = [(make(s, a), X, y, ctx) for s, (X, y, ctx, _) in enumerate(runs) for a in (0.5, 2.0)]
    assert len({f[0].batch_key(*f[1:]) for f in fits}) == 1
    type(fits[0][0]).fit_batched(fits)
    for i, (h, X, y, ctx) in enumerate(fits):
        s, a = divmod(i, 2)
        alone = make(s, (0.5, 2.0)[a]).fit(X, y, **ctx)
        Xt = runs[s][3]
        np.testing.assert_allclose(h.decision_function(Xt), alone.decision_function(Xt), atol=1e-4)
        assert h.fit_info_ == alone.fit_info_


def test_fit_all_groups_by_class_and_key(monkeypatch):
    runs = _runs(2)
    calls = []
    orig = CLAP.fit_batched.__func__

    def spy(cls, fits):
        calls.append(len(fits))
        return orig(cls, fits)

    monkeypatch.setattr(CLAP, "fit_batched", classmethod(spy))
    fits = [(CLAP(epochs=2, random_state=s), X, y, ctx) for s, (X, y, ctx, _) in enumerate(runs)]
    fits.append((CLAP(epochs=3), *runs[0][:3]))  # another schedule: alone
    fitted = fit_all(fits)
    assert calls == [2, 1]  # the lone run goes through fit (a batch of one)
    assert all(f is h for f, (h, *_) in zip(fitted, fits))
    assert all(hasattr(h, "prototypes_") for h in fitted)


def make_cache(path, n_classes, dim, n_views, seed=0):
    from featbench.cache import base_attrs, write_cache

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dim)).astype(np.float32)
    splits = {}
    for split, per in (("train", 8), ("val", 4), ("test", 10)):
        labels = np.repeat(np.arange(n_classes), per)
        feats = means[labels] + 1.5 * rng.normal(size=(labels.size, dim)).astype(np.float32)
        splits[split] = {"paths": [f"{split}/{i}.jpg" for i in range(labels.size)], "labels": labels, "features": feats}
    base = means[splits["train"]["labels"]]
    views = np.stack([base + 1.5 * rng.normal(size=base.shape) for _ in range(n_views)]).astype(np.float32)
    text = np.stack([means + 0.8 * rng.normal(size=means.shape) for _ in range(2)]).astype(np.float32)
    attrs = base_attrs(model="synthetic", pretrained="none", dataset="caltech101", embed_dim=dim, logit_scale=100.0,
                       fingerprint="batching-test")
    return write_cache(path, attrs=attrs, classnames=[f"c{i}" for i in range(n_classes)], splits=splits,
                       text_features=text, templates=["{}"] * 2, views=views, view_rows=np.arange(len(base)))


def test_runner_rows_equal_unbatched(tmp_path, monkeypatch):
    """The whole runner path: three seeds x {taskres (val alpha search), tip-adapter-f, clap} in stacked fits."""
    from featbench.protocol import Cell
    from featbench.runner import run_fit

    cache = make_cache(tmp_path / "c.h5", n_classes=6, dim=16, n_views=3)
    kw = dict(heads=["taskres", "tip-adapter-f", "clap"], shots=[2], seeds=[1, 2, 3], progress=False,
              sets={"taskres.epochs": 3, "tip-adapter-f.epochs": 2, "clap.epochs": 3})
    rows = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("FEATBENCH_BATCH", mode)
        for protocol in ("paper", "val"):
            out = tmp_path / f"r{mode}{protocol}.jsonl"
            rows[mode, protocol] = run_fit([cache], protocol=protocol, out=out, **kw)
    for protocol in ("paper", "val"):
        a, b = rows["1", protocol], rows["0", protocol]
        assert len(a) == len(b) == 9
        for ra, rb in zip(a, b):
            for k in ("head", "seed", "acc", "selected", "params", "notes", "mean_per_class_recall"):
                assert ra[k] == rb[k], (k, ra[k], rb[k])
    monkeypatch.setenv("FEATBENCH_BATCH", "1")
    cells = [Cell(cache="c", head="taskres", head_target="x", shots=k, seed=s) for k in (1, 2) for s in (1, 2, 3)]
    assert cell_groups(cells) == [[0, 1, 2], [3, 4, 5]]
    monkeypatch.setenv("FEATBENCH_BATCH", "0")
    assert cell_groups(cells) == [[i] for i in range(6)]


def test_largest_first_reorders_within_windows_only():
    from types import SimpleNamespace

    from featbench.batching import group_cost, largest_first

    groups = [[SimpleNamespace(shots=s)] * n for s, n in [(1, 3), (16, 3), (4, 3), (2, 1), (8, 3), (16, 1)]]
    out = list(largest_first(groups, window=4))
    assert [group_cost(g) for g in out] == [48, 12, 3, 2, 24, 16]  # first window sorted, then the second
    assert sorted(map(id, out)) == sorted(map(id, groups))
