"""featbench.fewshot against a literal, hand-written transcription of Dassl's few-shot sampling.

The transcription below follows Dassl.pytorch `DatasetBase.generate_fewshot_dataset` / `split_dataset_by_label`
as CoOp uses them: `set_random_seed(seed)` seeds Python's global `random`, the dataset reads its split file into
Datum objects, groups them by label in a `defaultdict(list)`, and for each group draws `random.sample(items, K)`
(or keeps every item when the group has fewer than K); CoOp calls it for train (K shots) and then for val
(min(K, 4) shots) with the same global generator. It is written independently of featbench/fewshot.py.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import pytest

from featbench.fewshot import fewshot_rows, union_rows, val_shots


class Datum:
    def __init__(self, impath, label, classname):
        self.impath = impath
        self.label = label
        self.classname = classname


def read_split(filepath):
    with open(filepath) as f:
        split = json.load(f)

    def _convert(items):
        return [Datum(impath, int(label), classname) for impath, label, classname in items]

    return _convert(split["train"]), _convert(split["val"]), _convert(split["test"])


def split_dataset_by_label(data_source):
    output = defaultdict(list)
    for item in data_source:
        output[item.label].append(item)
    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=False):
    if num_shots < 1:
        if len(data_sources) == 1:
            return data_sources[0]
        return data_sources
    output = []
    for data_source in data_sources:
        tracker = split_dataset_by_label(data_source)
        dataset = []
        for label, items in tracker.items():
            if len(items) >= num_shots:
                sampled_items = random.sample(items, num_shots)
            else:
                if repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
            dataset.extend(sampled_items)
        output.append(dataset)
    if len(output) == 1:
        return output[0]
    return output


def dassl_fewshot(split_file, num_shots, seed, has_val=True):
    """What a CoOp dataset class does in __init__ after `set_random_seed(seed)`."""
    random.seed(seed)
    train, val, test = read_split(split_file)
    train = generate_fewshot_dataset(train, num_shots=num_shots)
    if has_val:
        val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    else:
        val = []
    return [d.impath for d in train], [d.impath for d in val]


@pytest.fixture
def split_file(tmp_path):
    """A split_zhou-style JSON: 7 classes in shuffled first-appearance order, some smaller than 16 shots."""
    rng = np.random.default_rng(0)
    sizes_train = {0: 20, 1: 3, 2: 16, 3: 9, 4: 40, 5: 1, 6: 17}
    sizes_val = {0: 5, 1: 2, 2: 4, 3: 6, 4: 1, 5: 3, 6: 8}
    out = {}
    for split, sizes in (("train", sizes_train), ("val", sizes_val), ("test", {c: 2 for c in sizes_train})):
        labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
        labels = labels[rng.permutation(labels.size)]
        out[split] = [[f"{split}/c{int(l)}/{i:04d}.jpg", int(l), f"class{int(l)}"] for i, l in enumerate(labels)]
    path = tmp_path / "split_zhou_Toy.json"
    path.write_text(json.dumps(out))
    # sanity: first appearance order is not sorted
    order = list(dict.fromkeys(lbl for _, lbl, _ in out["train"]))
    assert order != sorted(order)
    return path, out


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_dassl_transcription(split_file, shots, seed):
    path, raw = split_file
    want_train, want_val = dassl_fewshot(path, shots, seed)
    train_paths = [p for p, _, _ in raw["train"]]
    val_paths = [p for p, _, _ in raw["val"]]
    state = random.getstate()
    sub = fewshot_rows([l for _, l, _ in raw["train"]], [l for _, l, _ in raw["val"]], shots, seed)
    assert random.getstate() == state  # featbench leaves the global generator alone
    assert [train_paths[r] for r in sub.train] == want_train
    assert [val_paths[r] for r in sub.val] == want_val


def test_no_val_split_samples_train_only(split_file):
    path, raw = split_file
    want_train, _ = dassl_fewshot(path, 4, 2, has_val=False)
    sub = fewshot_rows([l for _, l, _ in raw["train"]], None, 4, 2)
    assert [raw["train"][r][0] for r in sub.train] == want_train
    assert sub.val is None


def test_small_classes_keep_every_item(split_file):
    _, raw = split_file
    labels = [l for _, l, _ in raw["train"]]
    sub = fewshot_rows(labels, None, 16, 1)
    counts = np.bincount(np.asarray(labels)[sub.train], minlength=7)
    assert counts.tolist() == [16, 3, 16, 9, 16, 1, 16]
    assert len(set(sub.train)) == len(sub.train)
    assert val_shots(1) == 1 and val_shots(8) == 4 and val_shots(16) == 4


def test_union_rows_covers_every_subset(split_file):
    _, raw = split_file
    tl = [l for _, l, _ in raw["train"]]
    vl = [l for _, l, _ in raw["val"]]
    shots, seeds = [1, 2, 4, 8, 16], [1, 2, 3]
    utrain, uval = union_rows(tl, vl, shots, seeds)
    assert list(utrain) == sorted(set(utrain.tolist())) and list(uval) == sorted(set(uval.tolist()))
    for k in shots:
        for s in seeds:
            sub = fewshot_rows(tl, vl, k, s)
            assert set(sub.train) <= set(utrain.tolist())
            assert set(sub.val) <= set(uval.tolist())
    # and nothing beyond them
    every_train = set().union(*(fewshot_rows(tl, vl, k, s).train for k in shots for s in seeds))
    assert set(utrain.tolist()) == every_train
