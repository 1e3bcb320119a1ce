"""Property tests (hypothesis) over the readers of user files: the results reader, recipes, ObjectNet mapping
files and the cache reader on mutated attributes and datasets. Whatever the input, each gives a result or
one FeatbenchError, never another exception. Example counts are bounded so the module runs in seconds."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from featbench.errors import FeatbenchError  # noqa: E402

#: 30 examples each in CI; FEATBENCH_FUZZ_EXAMPLES=1000 for a deeper local run
FUZZ = settings(max_examples=int(os.environ.get("FEATBENCH_FUZZ_EXAMPLES", "30")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])

# any JSON value, small
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _one_result_or_error(call):
    """call() returns or raises FeatbenchError; anything else fails the property."""
    try:
        return call()
    except FeatbenchError as err:
        assert str(err).strip(), "an empty error line"
        return None


# -- results reader ---------------------------------------------------------------------------------------------
VALID_ROW = dict(dataset="dtd", source_dataset="dtd", model="RN50", pretrained="openai", fingerprint="f",
                 cache="c.h5", head="zeroshot", params={}, selected={}, protocol="paper", shots=1, seed=1, acc=50.0,
                 mean_per_class_recall=49.0, per_class={"correct": [1, 0], "total": [1, 1]})


@st.composite
def result_rows(draw):
    row = dict(VALID_ROW)
    for key in draw(st.lists(st.sampled_from(sorted(VALID_ROW)), max_size=3, unique=True)):
        if draw(st.booleans()):
            row[key] = draw(JSON)
        else:
            del row[key]
    return row


@FUZZ
@given(rows=st.lists(result_rows(), min_size=1, max_size=4), tail=st.sampled_from(["", "\n", "{\"acc\": 1", "\xff", "[1, 2]\n", "null\n", "3\n", "{}\n"]))
def test_results_reader_gives_a_table_or_one_error(tmp_path_factory, rows, tail):
    from featbench.tables import load_results

    path = tmp_path_factory.mktemp("res") / "r.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    path.write_bytes(text.encode("utf-8", "surrogateescape") if tail != "\xff" else text[:-1].encode() + b"\xff")
    _one_result_or_error(lambda: load_results(path))


# -- recipes ----------------------------------------------------------------------------------------------------
RECIPE_KEYS = ["name", "model", "pretrained", "datasets", "root", "cache_dir", "out", "heads", "shots", "seeds",
               "protocol", "set", "grid", "device", "views", "tables", "eval_on", "base_to_new", "jobs", "batch_size"]


@FUZZ
@given(data=st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=6), JSON, max_size=6))
def test_recipe_loader_gives_a_recipe_or_one_error(tmp_path_factory, data):
    from featbench.recipes import load_recipe

    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    _one_result_or_error(lambda: load_recipe(path))


@FUZZ
@given(text=st.text(max_size=80))
def test_recipe_loader_on_any_text(tmp_path_factory, text):
    from featbench.recipes import load_recipe

    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _one_result_or_error(lambda: load_recipe(path))


# -- ObjectNet mapping files ------------------------------------------------------------------------------------
MAPPINGS = ["folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json"]


@pytest.fixture(scope="module")
def objectnet_root(tmp_path_factory):
    from featbench.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("on"), "objectnet", n_classes=2, per_split=(0, 0, 1), size=16)


@st.composite
def mutated_mapping(draw, original: dict):
    data = dict(original)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["value", "key", "drop", "copy"]))
        keys = list(data)
        if how == "value" and keys:
            data[draw(st.sampled_from(keys))] = draw(JSON)
        elif how == "key":
            data[draw(st.text(max_size=6))] = draw(JSON)
        elif how == "drop" and keys:
            del data[draw(st.sampled_from(keys))]
        elif how == "copy" and len(keys) > 1:  # two keys with one target
            a, b = draw(st.sampled_from(keys)), draw(st.sampled_from(keys))
            data[a] = data[b]
    return data if draw(st.integers(0, 9)) else draw(JSON)


@FUZZ
@given(which=st.sampled_from(MAPPINGS), data=st.data())
def test_objectnet_reader_gives_a_layout_or_one_error(objectnet_root, tmp_path_factory, which, data):
    from featbench.datasets import load_dataset

    root = tmp_path_factory.mktemp("onx")
    shutil.copytree(objectnet_root / "objectnet", root / "objectnet")
    path = root / "objectnet" / "objectnet-1.0" / "mappings" / which
    original = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(data.draw(mutated_mapping(original))), encoding="utf-8")
    ds = _one_result_or_error(lambda: load_dataset("objectnet", root))
    if ds is not None:
        assert len(set(ds.classnames)) == len(ds.classnames)


@FUZZ
@given(blob=st.binary(max_size=40))
def test_objectnet_name_list_of_any_bytes(objectnet_root, tmp_path_factory, blob):
    from featbench.datasets import load_dataset

    root = tmp_path_factory.mktemp("onb")
    shutil.copytree(objectnet_root / "objectnet", root / "objectnet")
    path = root / "objectnet" / "objectnet-1.0" / "mappings" / "imagenet_to_label_2012_v2"
    path.write_bytes(path.read_bytes() + blob)
    _one_result_or_error(lambda: load_dataset("objectnet", root))


# -- the cache reader on mutated attributes and datasets --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from featbench.cache import base_attrs, write_cache

    rng = np.random.default_rng(0)
    splits = {s: {"paths": [f"{s}/{i}" for i in range(6)], "labels": np.arange(6) % 3,
                  "features": rng.normal(size=(6, 4)).astype(np.float32)} for s in ("train", "val", "test")}
    attrs = base_attrs(model="m", pretrained="p", dataset="d", embed_dim=4, logit_scale=100.0, fingerprint="fp",
                       preprocess={"classname_style": "clean"})
    path = tmp_path_factory.mktemp("cache") / "tiny.h5"
    write_cache(path, attrs=attrs, classnames=["a", "b", "c"], splits=splits,
                text_features=rng.normal(size=(2, 3, 4)).astype(np.float32), templates=["a {}.", "b {}."],
                views=rng.normal(size=(2, 6, 4)).astype(np.float32), view_rows=np.arange(6), view_scale=(0.5, 1.0),
                dtype="float32")
    return path


ROOT_ATTRS = ["featbench_schema", "featbench_version", "model", "pretrained", "dataset", "embed_dim", "logit_scale",
              "fingerprint", "preprocess", "created", "nonfinite"]
DATASETS = ["classnames", "splits/train/features", "splits/train/labels", "splits/train/paths", "splits/test/labels",
            "splits/test/features", "splits/train/views", "splits/train/view_rows", "text/features"]
ATTR_VALUES = (st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=10) | st.booleans()
               | st.just("{\"a\": [1, 2]}") | st.just("[]") | st.just("null") | st.just(b"\xff\xfe")
               | st.lists(st.integers(-5, 5), min_size=1, max_size=3).map(np.array)
               | JSON.map(json.dumps)  # JSON of any shape where JSON is expected
               | st.dictionaries(st.sampled_from(["view_scales", "view_scale", "classname_style", "source",
                                                  "templates", "checkpoint"]), JSON, max_size=3).map(json.dumps))
ARRAYS = st.sampled_from([np.zeros(0), np.zeros((6, 4), np.float16), np.arange(6) - 3, np.full(6, 99),
                          np.array([b"x"] * 6), np.zeros((2, 2, 2)), np.array([1.5, np.nan] * 3),
                          np.array(["a", "b"], dtype=object), np.zeros((6, 4), np.int8)])


def _exercise(path):
    from featbench.cache import Cache

    with Cache(path) as c:
        facts = [c.model, c.pretrained, c.dataset, c.fingerprint, c.content_id, c.embed_dim, c.logit_scale, c.preprocess,
                 c.extraction, c.nonfinite, c.classnames, c.num_classes, c.splits, c.summary(), c.view_sets()]
        for split in c.splits:
            facts += [c.labels(split), c.paths(split), c.features(split), c.feature_rows(split)]
        if c.has_text:
            facts += [c.text_features(), c.templates]
        if c.has_views:
            facts += [c.views(c.view_rows()), c.num_views]
    return facts


@FUZZ
@given(attr_changes=st.dictionaries(st.sampled_from(ROOT_ATTRS), st.none() | ATTR_VALUES, max_size=3),
       data_changes=st.dictionaries(st.sampled_from(DATASETS), st.none() | ARRAYS, max_size=2),
       text_attr=st.none() | ATTR_VALUES)
def test_cache_reader_gives_data_or_one_error(tiny_cache, tmp_path_factory, attr_changes, data_changes, text_attr):
    import h5py

    path = tmp_path_factory.mktemp("mut") / "c.h5"
    shutil.copy(tiny_cache, path)
    with h5py.File(path, "r+") as f:
        for key, value in attr_changes.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
        for name, arr in data_changes.items():
            del f[name]
            if arr is not None:
                f.create_dataset(name, data=arr)
        if text_attr is not None and "text/features" in f:
            f["text/features"].attrs["templates"] = text_attr
    _one_result_or_error(lambda: _exercise(path))


# What the fuzzing found in the cache reader: ``Cache.view_sets`` trusted the views' ``scale`` attribute and the
# preprocess record's ``view_scales`` / ``view_scale`` (IndexError, ValueError, TypeError instead of one line).
@pytest.mark.parametrize("scale, preprocess", [(0, None), ('{"a": [1, 2]}', None), (None, '{"view_scales": 5}'),
                                               (None, '{"view_scale": "x"}')])
def test_cache_view_scale_of_the_wrong_type_is_one_error(tiny_cache, tmp_path, scale, preprocess):
    import h5py

    from featbench.cache import Cache

    path = tmp_path / "c.h5"
    shutil.copy(tiny_cache, path)
    with h5py.File(path, "r+") as f:
        if scale is None:
            del f["splits/train/views"].attrs["scale"]
        else:
            f["splits/train/views"].attrs["scale"] = scale
        if preprocess is not None:
            f.attrs["preprocess"] = preprocess
    with Cache(path) as c:
        _one_result_or_error(c.view_sets)
