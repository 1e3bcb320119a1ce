"""The cache's text-tower record (``text_tower`` attr + ``/model/text_tower_state``) read by prompt learners.

A record that is not what extraction wrote (wrong JSON types, missing or malformed fields, a truncated state,
a model config open_clip rejects) must be one ``featbench: error: cache PATH: its text_tower record ...`` line,
exit 2, from ``featbench fit --heads coop|kgcoop|cocoop``, never a traceback.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from featbench import texttower
from featbench.errors import FeatbenchError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _cli(*args):
    from featbench.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _lines(res) -> list[str]:
    return [ln for ln in res.output.strip().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A real cache of the tiny random-weight model (its record stores the tower's state)."""
    from featbench.synthetic import make_dataset

    tmp = tmp_path_factory.mktemp("tower")
    root = make_dataset(tmp / "data", "caltech101", n_classes=3, per_split=(4, 2, 2), size=36)
    res = _cli("extract", "--dataset", "caltech101", "--root", root, "--model", "tiny-vit", "--pretrained", "none",
               "--views", "0", "--batch-size", "8", "--device", "cpu", "--cache-dir", tmp / "cache", "--no-progress",
               "--workers", "0")
    assert res.exit_code == 0, res.output
    return tmp / "cache" / "tiny-vit--none" / "caltech101.h5"


@pytest.fixture(scope="module")
def record(extracted):
    import h5py

    with h5py.File(extracted, "r") as f:
        return json.loads(f.attrs["text_tower"])


def _with_attr(extracted, tmp_path, raw, edit_file=None):
    """A copy of the cache whose text_tower attr is `raw` (JSON text, or a number)."""
    import h5py

    out = tmp_path / "bad.h5"
    shutil.copy(extracted, out)
    with h5py.File(out, "r+") as f:
        f.attrs["text_tower"] = raw
        if edit_file is not None:
            edit_file(f)
    return out


def _set(rec, path, value):
    out = copy.deepcopy(rec)
    node = out
    for k in path[:-1]:
        node = node[k]
    if value is _DEL:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DEL = object()
STATE = texttower.STATE_DATASET

#: (id, the record after the mutation (a function of the real one), what the error line must name)
MUTATIONS = [
    ("key-model-missing", lambda r: _set(r, ["model"], _DEL), "lacks the key 'model'"),
    ("key-model-number", lambda r: _set(r, ["model"], 5), "'model' = 5"),
    ("key-model-empty", lambda r: _set(r, ["model"], ""), "'model'"),
    ("cfg-missing", lambda r: _set(r, ["model_cfg"], _DEL), "lacks the key 'model_cfg'"),
    ("cfg-list", lambda r: _set(r, ["model_cfg"], [1, 2]), "'model_cfg'"),
    ("cfg-no-text", lambda r: _set(r, ["model_cfg", "text_cfg"], _DEL), "'model_cfg'"),
    ("cfg-embed-text", lambda r: _set(r, ["model_cfg", "embed_dim"], "32"), "'model_cfg'"),
    ("cfg-heads-not-dividing", lambda r: _set(r, ["model_cfg", "text_cfg", "heads"], 3), "open_clip cannot build"),
    ("cfg-layers-text", lambda r: _set(r, ["model_cfg", "text_cfg", "layers"], "one"), "open_clip cannot build"),
    ("cfg-vision-bad", lambda r: _set(r, ["model_cfg", "vision_cfg", "patch_size"], [1, 2, 3]), "open_clip cannot build"),
    ("cfg-huge", lambda r: _set(r, ["model_cfg", "text_cfg", "width"], 2**20), "parameters"),
    ("cfg-pool-first", lambda r: _set(r, ["model_cfg", "text_cfg", "pool_type"], "first"), "cannot run"),
    ("cfg-other-width", lambda r: _set(r, ["model_cfg", "text_cfg", "width"], 64), "'state_layout'"),
    ("quick-gelu-missing", lambda r: _set(r, ["quick_gelu"], _DEL), "lacks the key 'quick_gelu'"),
    ("quick-gelu-text", lambda r: _set(r, ["quick_gelu"], "yes"), "'quick_gelu'"),
    ("quick-gelu-int", lambda r: _set(r, ["quick_gelu"], 1), "'quick_gelu'"),
    ("weights-missing", lambda r: _set(r, ["weights"], _DEL), "lacks the key 'weights'"),
    ("weights-unknown", lambda r: _set(r, ["weights"], "random"), "'weights'"),
    ("weights-list", lambda r: _set(r, ["weights"], ["none"]), "'weights'"),
    ("weights-file-with-state", lambda r: _set(r, ["weights"], "file"), "'state'"),
    ("weights-tag-unknown", lambda r: {**r, "weights": "tag", "pretrained": "no-such-tag", "state": None},
     "cannot be found"),
    ("pretrained-missing", lambda r: _set(r, ["pretrained"], _DEL), "lacks the key 'pretrained'"),
    ("pretrained-null", lambda r: _set(r, ["pretrained"], None), "'pretrained'"),
    ("ckpt-sha-bad", lambda r: _set(r, ["checkpoint_sha256"], "xyz"), "'checkpoint_sha256'"),
    ("ckpt-sha-missing", lambda r: _set(r, ["checkpoint_sha256"], _DEL), "lacks the key 'checkpoint_sha256'"),
    ("sha-missing", lambda r: _set(r, ["sha256"], _DEL), "lacks the key 'sha256'"),
    ("sha-short", lambda r: _set(r, ["sha256"], "abc"), "'sha256'"),
    ("sha-upper", lambda r: _set(r, ["sha256"], r["sha256"].upper() + "X"), "'sha256'"),
    ("sha-number", lambda r: _set(r, ["sha256"], 12), "'sha256'"),
    ("state-missing", lambda r: _set(r, ["state"], _DEL), "lacks the key 'state'"),
    ("state-number", lambda r: _set(r, ["state"], 7), "'state'"),
    ("state-null", lambda r: _set(r, ["state"], None), "'state'"),
    ("state-elsewhere", lambda r: _set(r, ["state"], "/model/nothing"), "/model/nothing"),
    ("layout-missing", lambda r: _set(r, ["state_layout"], _DEL), "lacks the key 'state_layout'"),
    ("layout-text", lambda r: _set(r, ["state_layout"], "all"), "'state_layout'"),
    ("layout-empty", lambda r: _set(r, ["state_layout"], []), "'state_layout'"),
    ("layout-dim-text", lambda r: _set(r, ["state_layout", 0, 1], [1, "2"]), "'state_layout'[0]"),
    ("layout-negative", lambda r: _set(r, ["state_layout", 0, 1], [-1, 32]), "'state_layout'[0]"),
    ("layout-name-number", lambda r: _set(r, ["state_layout", 0, 0], 3), "'state_layout'[0]"),
    ("layout-outside", lambda r: _set(r, ["state_layout", 0, 0], "visual.conv1.weight"), "outside the text tower"),
    ("layout-twice", lambda r: _set(r, ["state_layout", 1, 0], r["state_layout"][0][0]), "twice"),
    ("layout-short", lambda r: _set(r, ["state_layout"], r["state_layout"][:-1]), "'state_layout'"),
    ("layout-transposed", lambda r: _set(r, ["state_layout", 0, 1], r["state_layout"][0][1][::-1]),
     "does not fit its 'model_cfg'"),
    ("record-array", lambda r: [r], "is a JSON array"),
    ("record-null", lambda r: None, "is a JSON null"),
    ("record-string", lambda r: "text", "is a JSON string"),
]

#: (id, attr text or number, an edit of the file, what the line must name): damage outside the record's fields
FILE_DAMAGE = [
    ("json-cut", lambda r: json.dumps(r)[:40], None, "not valid JSON"),
    ("json-garbage", lambda r: "{'model': 1}", None, "not valid JSON"),
    ("attr-number", lambda r: 5, None, "stored as int"),
    ("state-truncated", json.dumps, lambda f: _replace(f, STATE, lambda a: a[:-7]), "truncated"),
    ("state-2d", json.dumps, lambda f: _replace(f, STATE, lambda a: a.reshape(1, -1)), "shape"),
    ("state-deleted", json.dumps, lambda f: f.__delitem__(STATE), "which the cache lacks"),
    ("state-a-group", json.dumps, lambda f: (f.__delitem__(STATE), f.create_group(STATE)), "which the cache lacks"),
]


def _replace(f, name, change):
    data = change(f[name][()])
    del f[name]
    f.create_dataset(name, data=data)


def _fit(cache, tmp_path, head="coop"):
    texttower._MEMO.clear()
    return _cli("fit", cache, "--heads", head, "--shots", "1", "--seeds", "1", "--set", f"{head}.epochs=1",
                "--out", tmp_path / "rows.jsonl", "--no-progress")


def _one_error_line(res, cache, needle):
    assert res.exit_code == 2, res.output
    lines = _lines(res)
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith(f"featbench: error: cache {cache}: its text_tower record"), lines[0]
    assert needle in lines[0], lines[0]
    assert "re-extract" in lines[0]  # the fix for an extracted cache


@pytest.mark.parametrize("name,mutate,needle", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_bad_field_is_one_line_naming_it(extracted, record, tmp_path, name, mutate, needle):
    cache = _with_attr(extracted, tmp_path, json.dumps(mutate(record)))
    _one_error_line(_fit(cache, tmp_path), cache, needle)


@pytest.mark.parametrize("name,attr,edit,needle", FILE_DAMAGE, ids=[m[0] for m in FILE_DAMAGE])
def test_damaged_attr_or_state_is_one_line(extracted, record, tmp_path, name, attr, edit, needle):
    cache = _with_attr(extracted, tmp_path, attr(record), edit)
    _one_error_line(_fit(cache, tmp_path), cache, needle)


@pytest.mark.parametrize("head", ["kgcoop", "cocoop"])
@pytest.mark.parametrize("case", ["sha-short", "cfg-heads-not-dividing", "layout-transposed"])
def test_every_prompt_learner_gives_the_same_line(extracted, record, tmp_path, head, case):
    _, mutate, needle = next(m for m in MUTATIONS if m[0] == case)
    cache = _with_attr(extracted, tmp_path, json.dumps(mutate(record)))
    _one_error_line(_fit(cache, tmp_path, head), cache, needle)


def test_the_real_record_passes_and_builds(extracted, record):
    from featbench.cache import Cache

    with Cache(extracted) as c:
        assert texttower.cache_tower_record(c) == record
        tower = texttower.build_from_record(texttower.check_record(record, c), c)
    assert tower.sha256 == record["sha256"]


# ----------------------------------------------------------------------------------------------------
# hypothesis: any mutation of the record's JSON gives a tower or one FeatbenchError line
# ----------------------------------------------------------------------------------------------------
class _Cache:
    """What the record's readers touch of a cache, over the real cache's state array."""

    path, model, pretrained, preprocess = "c.h5", "tiny-vit", "none", {}

    def __init__(self, raw, state):
        self.attrs = {"text_tower": raw}
        self._state = state

    def has_dataset(self, name):
        return name == STATE

    def dataset_shape(self, name):
        return self._state.shape if name == STATE else None

    def array(self, name):
        return self._state


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["none", "file", "tag", "/model/text_tower_state",
                                                            "token_embedding.weight", "0" * 64]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=6)


def _paths(rec, prefix=()):
    """Every key path of the record (lists and dicts), for mutations at any depth."""
    out = [prefix] if prefix else []
    if isinstance(rec, dict):
        for k, v in rec.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(rec, list):
        for i, v in enumerate(rec[:3]):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def _mutated(draw, rec):
    rec = copy.deepcopy(rec)
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(rec)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = rec
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_values)
    text = json.dumps(rec)
    if draw(st.integers(0, 9)) == 0:  # sometimes the JSON text itself is cut
        text = text[: draw(st.integers(0, len(text)))]
    return text


@pytest.fixture(scope="module")
def stored_state(extracted):
    import h5py

    with h5py.File(extracted, "r") as f:
        return f[STATE][()]


def test_any_mutated_record_gives_a_tower_or_one_error_line(record, stored_state):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutated(record))
    def check(raw):
        cache = _Cache(raw, stored_state)
        try:
            tower = texttower.build_from_record(texttower.cache_tower_record(cache), cache)
        except FeatbenchError as err:
            text = str(err)
            assert "\n" not in text and text.startswith("cache c.h5"), text
        else:
            assert tower.sha256 == record["sha256"]

    check()
