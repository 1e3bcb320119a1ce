"""featbench.merge: parts of one cache merge back into the whole; mismatched parts are refused."""

from __future__ import annotations

import numpy as np
import pytest

from featbench.cache import Cache, base_attrs, write_cache
from featbench.errors import FeatbenchError
from featbench.merge import merge_parts, part_path

D, C, T, V = 8, 3, 2, 4
N = {"train": 12, "val": 6, "test": 7}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for s, n in N.items():
        splits[s] = {
            "paths": [f"{s}/img{i:03d}.jpg" for i in range(n)],
            "labels": np.arange(n) % C,
            "features": rng.standard_normal((n, D)).astype(np.float16),
        }
    return {
        "classnames": ["cat", "dog", "fox"],
        "text": rng.standard_normal((T, C, D)).astype(np.float16),
        "splits": splits,
        "views": rng.standard_normal((V, N["train"], D)).astype(np.float16),
        "view_rows": np.arange(N["train"]),
    }


def _attrs(fingerprint="f" * 64, **kw):
    return base_attrs(model="tiny", pretrained="none", dataset="toy", embed_dim=D, logit_scale=100.0,
                      fingerprint=fingerprint, preprocess={"size": 32}, **kw)


def _write(path, data, rows=None, view_rows=None, attrs=None, classnames=None, text=None):
    """A cache holding the full index and the given subset of rows/views of `data`."""
    splits = {}
    for s, d in data["splits"].items():
        r = np.arange(N[s]) if rows is None else np.asarray(rows.get(s, []), dtype=np.int64)
        splits[s] = {"paths": d["paths"], "labels": d["labels"], "features": d["features"][r].reshape(-1, D),
                     "rows": None if rows is None else r}
    vr = data["view_rows"] if view_rows is None else np.asarray(view_rows, dtype=np.int64)
    return write_cache(path, attrs=attrs or _attrs(), classnames=classnames or data["classnames"], splits=splits,
                       text_features=data["text"] if text is None else text, templates=["a {}.", "the {}."],
                       views=data["views"][:, vr], view_rows=vr)


def _assert_same(a, b):
    with Cache(a) as x, Cache(b) as y:
        ax = {k: v for k, v in x.attrs.items() if k != "created"}
        ay = {k: v for k, v in y.attrs.items() if k != "created"}
        assert ax == ay
        assert x.classnames == y.classnames
        np.testing.assert_array_equal(x.text_features(), y.text_features())
        assert x.templates == y.templates
        for s in N:
            assert x.paths(s) == y.paths(s)
            np.testing.assert_array_equal(x.labels(s), y.labels(s))
            np.testing.assert_array_equal(x.feature_rows(s), y.feature_rows(s))
            np.testing.assert_array_equal(x.features(s), y.features(s))
            assert ("rows" in x._f["splits"][s]) == ("rows" in y._f["splits"][s])
            assert x._f["splits"][s]["features"].dtype == y._f["splits"][s]["features"].dtype
        np.testing.assert_array_equal(x.view_rows(), y.view_rows())
        np.testing.assert_array_equal(x.views(), y.views())


def test_part_path_naming(tmp_path):
    assert part_path(tmp_path / "toy.h5", 1, 4).name == "toy.h5.part-1-of-4.h5"


def test_merge_of_interleaved_parts_equals_whole(tmp_path):
    data = _data()
    whole = _write(tmp_path / "whole.h5", data)
    parts = []
    for rank in range(3):
        rows = {s: np.arange(n)[rank::3] for s, n in N.items()}
        parts.append(_write(tmp_path / f"p{rank}.h5", data, rows=rows, view_rows=np.arange(N["train"])[rank::3]))
    merged = merge_parts(list(reversed(parts)), tmp_path / "merged.h5")
    _assert_same(whole, merged)
    assert not (tmp_path / "merged.h5.merge-tmp").exists()


def test_merge_contiguous_blocks_and_partial_coverage(tmp_path):
    data = _data(1)
    # the union covers only some rows: `rows` stays, in sorted order
    rows_a = {"train": [0, 1, 2], "val": [5], "test": []}
    rows_b = {"train": [7, 3], "val": [0], "test": [6]}
    a = _write(tmp_path / "a.h5", data, rows=rows_a, view_rows=[1, 2])
    b = _write(tmp_path / "b.h5", data, rows=rows_b, view_rows=[9])
    merged = merge_parts([a, b], tmp_path / "m.h5")
    expect = _write(tmp_path / "e.h5", data, rows={"train": [0, 1, 2, 3, 7], "val": [0, 5], "test": [6]}, view_rows=[1, 2, 9])
    _assert_same(expect, merged)


def test_overlapping_identical_rows_are_deduplicated(tmp_path):
    data = _data(2)
    whole = _write(tmp_path / "whole.h5", data)
    a = _write(tmp_path / "a.h5", data, rows={s: np.arange(n)[: n // 2 + 2] for s, n in N.items()}, view_rows=np.arange(8))
    b = _write(tmp_path / "b.h5", data, rows={s: np.arange(n)[n // 2 - 1:] for s, n in N.items()}, view_rows=np.arange(5, 12))
    _assert_same(whole, merge_parts([a, b], tmp_path / "m.h5"))


def test_overlapping_rows_with_different_features_are_refused(tmp_path):
    data = _data(3)
    a = _write(tmp_path / "a.h5", data, rows={"train": [0, 1], "val": [], "test": []}, view_rows=[])
    other = _data(3)
    other["splits"]["train"]["features"][1] += 1
    b = _write(tmp_path / "b.h5", other, rows={"train": [1, 2], "val": [], "test": []}, view_rows=[])
    with pytest.raises(FeatbenchError, match=r"b\.h5.*row 1.*different features"):
        merge_parts([a, b], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.merge-tmp").exists()


@pytest.mark.parametrize("change, message", [
    ("fingerprint", "fingerprint"),
    ("model", "model"),
    ("dataset", "dataset"),
    ("classnames", "class names"),
    ("text", "text features"),
    ("index", "split index"),
    ("labels", "split index"),
])
def test_mismatched_parts_are_refused(tmp_path, change, message):
    data = _data(4)
    a = _write(tmp_path / "a.h5", data, rows={"train": [0], "val": [], "test": []})
    kw = {}
    other = _data(4)
    if change == "fingerprint":
        kw["attrs"] = _attrs(fingerprint="0" * 64)
    elif change in ("model", "dataset"):
        attrs = _attrs()
        attrs[change] = "something-else"
        kw["attrs"] = attrs
    elif change == "classnames":
        kw["classnames"] = ["cat", "dog", "wolf"]
    elif change == "text":
        kw["text"] = data["text"] + 1
    elif change == "index":
        other["splits"]["test"]["paths"] = list(reversed(other["splits"]["test"]["paths"]))
    elif change == "labels":
        other["splits"]["val"]["labels"] = (other["splits"]["val"]["labels"] + 1) % C
    b = _write(tmp_path / "bad-part.h5", other, rows={"train": [1], "val": [], "test": []}, **kw)
    with pytest.raises(FeatbenchError, match=rf"bad-part\.h5.*{message}") as err:
        merge_parts([a, b], tmp_path / "m.h5")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.h5").exists()


def test_mismatched_view_count_is_refused(tmp_path):
    data = _data(5)
    a = _write(tmp_path / "a.h5", data, view_rows=[0, 1])
    other = _data(5)
    other["views"] = other["views"][:2]
    b = _write(tmp_path / "b.h5", other, view_rows=[2])
    with pytest.raises(FeatbenchError, match="views per image"):
        merge_parts([a, b], tmp_path / "m.h5")


def test_out_exists_needs_overwrite(tmp_path):
    data = _data()
    a = _write(tmp_path / "a.h5", data)
    out = _write(tmp_path / "out.h5", data)
    with pytest.raises(FeatbenchError, match="--overwrite"):
        merge_parts([a], out)
    merge_parts([a], out, overwrite=True)
    with pytest.raises(FeatbenchError, match="one of the parts"):
        merge_parts([a], a, overwrite=True)
    with pytest.raises(FeatbenchError, match="does not exist"):
        merge_parts([tmp_path / "nope.h5"], tmp_path / "x.h5")


def test_skipped_lists_are_unioned_in_canonical_order(tmp_path):
    import h5py

    data = _data(6)
    a = _write(tmp_path / "a.h5", data, rows={"train": [0, 1], "val": [], "test": []}, view_rows=[])
    b = _write(tmp_path / "b.h5", data, rows={"train": [2], "val": [], "test": []}, view_rows=[])
    for p, skipped in ((a, ["test/img003.jpg", "train/img005.jpg"]), (b, ["train/img004.jpg", "train/img005.jpg"])):
        with h5py.File(p, "a") as f:
            f.create_dataset("skipped", data=np.array(skipped, dtype=object), dtype=h5py.string_dtype("utf-8"))
    with Cache(merge_parts([a, b], tmp_path / "m.h5")) as c:
        assert c.skipped == ["train/img004.jpg", "train/img005.jpg", "test/img003.jpg"]


def test_cli_merge(tmp_path):
    from typer.testing import CliRunner

    import featbench.cli  # noqa: F401  (registers every command)
    from featbench.cli.app import app
    import featbench.cli.merge  # noqa: F401  (registers the command)

    data = _data(7)
    whole = _write(tmp_path / "whole.h5", data)
    a = _write(tmp_path / "a.h5", data, rows={s: np.arange(n)[: n // 2] for s, n in N.items()}, view_rows=np.arange(6))
    b = _write(tmp_path / "b.h5", data, rows={s: np.arange(n)[n // 2:] for s, n in N.items()}, view_rows=np.arange(6, 12))
    # typer runs a lone command without its name; other command modules may not be importable yet
    cmd = ["merge"] if len(app.registered_commands) > 1 else []
    res = CliRunner().invoke(app, [*cmd, str(a), str(b), "--out", str(tmp_path / "m.h5")])
    assert res.exit_code == 0, res.output
    _assert_same(whole, tmp_path / "m.h5")
    res = CliRunner().invoke(app, [*cmd, str(a), str(b), "--out", str(tmp_path / "m.h5")])
    assert res.exit_code != 0 and "--overwrite" in (res.output + str(res.exception))


def test_parts_of_other_extractions_or_unfinished_parts_are_refused(tmp_path):
    import h5py

    data = _data(8)
    a = _write(tmp_path / "a.h5", data, rows={"train": [0], "val": [], "test": []}, attrs=_attrs(extraction='{"views": 4}'))
    b = _write(tmp_path / "b.h5", data, rows={"train": [1], "val": [], "test": []}, attrs=_attrs(extraction='{"views": 8}'))
    with pytest.raises(FeatbenchError, match=r"b\.h5 was extracted with other arguments .*views"):
        merge_parts([a, b], tmp_path / "m.h5")
    c = _write(tmp_path / "c.h5", data, rows={"train": [1], "val": [], "test": []}, attrs=_attrs(extraction='{"views": 4}'))
    with h5py.File(c, "a") as f:
        f.create_group("_progress")
    with pytest.raises(FeatbenchError, match=r"c\.h5 is an unfinished extraction"):
        merge_parts([a, c], tmp_path / "m.h5")


def test_other_dtype_is_refused(tmp_path):
    data = _data(9)
    a = _write(tmp_path / "a.h5", data, rows={"train": [0], "val": [], "test": []})
    other = _data(9)
    splits = {s: {"paths": d["paths"], "labels": d["labels"], "features": d["features"][[1]] if s == "train" else d["features"][:0],
                  "rows": [1] if s == "train" else []} for s, d in other["splits"].items()}
    b = write_cache(tmp_path / "b.h5", attrs=_attrs(), classnames=other["classnames"], splits=splits,
                    text_features=other["text"], templates=["a {}.", "the {}."], views=other["views"],
                    view_rows=other["view_rows"], dtype="float32")
    with pytest.raises(FeatbenchError, match=r"b\.h5 stores .* as float32 .*--dtype"):
        merge_parts([a, b], tmp_path / "m.h5")
