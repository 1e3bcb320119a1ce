"""`featbench import ... --text-tower MODEL:PRETRAINED|MODEL:CKPT`: the text encoder of imported features.

Prompt learners run the text encoder that made a cache's text features. An imported cache has none until
``--text-tower`` names it; featbench trusts it only after it re-encodes the imported class prompts.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featbench import texttower
from featbench.encoders import Encoder

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NAMES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _cli(*args):
    from featbench.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _lines(res) -> list[str]:
    return [ln for ln in res.output.strip().splitlines() if ln.strip()]


def _checkpoint(path, seed: int):
    """A tiny open_clip model with random weights (seeded), saved as a state_dict checkpoint."""
    import open_clip

    from featbench.encoders import register_assets

    register_assets()
    torch.manual_seed(seed)
    torch.save(open_clip.create_model("tiny-vit").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    return _checkpoint(tmp / "a.pt", 11), _checkpoint(tmp / "b.pt", 12)


def _npz(path, text, *, classnames=True, templates=True, text_raw=True):
    """Import inputs: image features near the class text features (2 train, 2 test per class)."""
    t = text.mean(0)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(NAMES)), 2)
    arrays = {f"{s}_features": (t[y] + 0.05 * rng.normal(size=(len(y), t.shape[1]))).astype(np.float32)
              for s in ("train", "test")}
    arrays.update(train_labels=y, test_labels=y)
    if classnames:
        arrays["classnames"] = np.array(NAMES)
    if templates:
        arrays["templates"] = np.array(TEMPLATES)
    if text_raw:
        arrays["text_raw"] = text
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def inputs(ckpts, tmp_path_factory):
    """.npz inputs whose text_raw the checkpoint `a` made (float32), and the same without templates."""
    tmp = tmp_path_factory.mktemp("npz")
    text = Encoder("tiny-vit", str(ckpts[0]), "cpu").encode_text(NAMES, TEMPLATES)[0]
    return {"full": _npz(tmp / "full.npz", text), "no-templates": _npz(tmp / "nt.npz", text, templates=False),
            "no-classnames": _npz(tmp / "nc.npz", text, classnames=False),
            "no-text": _npz(tmp / "nx.npz", text, text_raw=False)}


def _import(npz, out, *extra):
    return _cli("import", npz, "--out", out, "--dataset", "toy", "--model", "tiny-vit", "--pretrained", "mine",
                *extra)


def _fit(cache, out, head="coop"):
    texttower._MEMO.clear()
    return _cli("fit", cache, "--heads", head, "--shots", "1", "--seeds", "1", "--set", f"{head}.epochs=2",
                "--set", f"{head}.n_ctx=2", "--out", out, "--no-progress")


def test_imported_tower_is_recorded_as_extract_records_it_and_coop_fits(ckpts, inputs, tmp_path):
    out = tmp_path / "imp.h5"
    res = _import(inputs["full"], out, "--text-tower", f"tiny-vit:{ckpts[0]}")
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r") as f:
        record = json.loads(f.attrs["text_tower"])
    expected, extra = texttower.cache_record(Encoder("tiny-vit", str(ckpts[0]), "cpu"))  # what extract records
    assert record == expected and not extra and record["weights"] == "file"
    from featbench.cache import Cache

    with Cache(out) as c:
        tower = texttower.load_for_cache(c)
        with torch.no_grad():
            again = tower.encode_text([t.replace("{}", n) for t in TEMPLATES for n in NAMES]).numpy()
        np.testing.assert_allclose(again.reshape(c.text_features().shape), c.text_features(), atol=2e-3)
    for head in ("coop", "kgcoop", "cocoop"):
        rows = tmp_path / f"{head}.jsonl"
        res = _fit(out, rows, head)
        assert res.exit_code == 0, res.output
        row = json.loads(rows.read_text().splitlines()[0])
        assert row["head"] == head and 0.0 <= row["acc"] <= 100.0


def test_templates_flag_stands_in_for_missing_templates(ckpts, inputs, tmp_path):
    out = tmp_path / "imp.h5"
    res = _import(inputs["no-templates"], out, "--text-tower", f"tiny-vit:{ckpts[0]}")
    assert res.exit_code == 2 and "--templates" in res.output and len(_lines(res)) == 1, res.output
    assert not out.exists()
    tfile = tmp_path / "t.txt"
    tfile.write_text("\n".join(TEMPLATES) + "\n")
    res = _import(inputs["no-templates"], out, "--text-tower", f"tiny-vit:{ckpts[0]}", "--templates", tfile)
    assert res.exit_code == 0, res.output
    from featbench.cache import Cache

    with Cache(out) as c:
        assert c.templates == TEMPLATES
    tfile.write_text("\n".join(TEMPLATES[::-1]) + "\n")  # templates in the wrong order: prompts do not match
    res = _import(inputs["no-templates"], tmp_path / "o2.h5", "--text-tower", f"tiny-vit:{ckpts[0]}", "--templates", tfile)
    assert res.exit_code == 2 and "cosine" in res.output and len(_lines(res)) == 1, res.output
    res = _import(inputs["full"], tmp_path / "o3.h5", "--templates", tfile)  # the .npz has other templates
    assert res.exit_code == 2 and "--templates" in res.output and len(_lines(res)) == 1, res.output


def _refused(res, *needles):
    assert res.exit_code == 2, res.output
    lines = _lines(res)
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith("featbench: error: --text-tower"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_another_checkpoint_is_refused_with_the_worst_class_and_its_cosine(ckpts, inputs, tmp_path):
    out = tmp_path / "imp.h5"
    line = _refused(_import(inputs["full"], out, "--text-tower", f"tiny-vit:{ckpts[1]}"), "cosine", "class '")
    assert not out.exists()
    cos = float(line.split("cosine ")[1].split()[0])
    assert cos < 0.999


@pytest.mark.parametrize("spec,needles", [
    ("no-such-model:{a}", ["not an open_clip architecture"]),
    ("tiny-vit", ["MODEL:PRETRAINED"]),
    (":{a}", ["MODEL:PRETRAINED"]),
    ("tiny-vit:", ["MODEL:PRETRAINED"]),
    ("tiny-vit:/no/such/file.pt", ["not found"]),
    ("tiny-vit:openai", ["not an open_clip tag"]),
    ("tiny-rn:{a}", ["could not load"]),
])
def test_bad_text_tower_specs_are_one_line(ckpts, inputs, tmp_path, spec, needles):
    _refused(_import(inputs["full"], tmp_path / "imp.h5", "--text-tower", spec.format(a=ckpts[0])), *needles)


@pytest.mark.parametrize("which,needle", [("no-classnames", "classnames"), ("no-text", "text_raw")])
def test_what_the_check_needs_is_named(ckpts, inputs, tmp_path, which, needle):
    _refused(_import(inputs[which], tmp_path / "imp.h5", "--text-tower", f"tiny-vit:{ckpts[0]}"), needle)


def test_a_text_width_that_differs_is_refused(ckpts, tmp_path):
    text = np.random.default_rng(1).normal(size=(len(TEMPLATES), len(NAMES), 16)).astype(np.float32)
    _refused(_import(_npz(tmp_path / "w.npz", text), tmp_path / "imp.h5", "--text-tower", f"tiny-vit:{ckpts[0]}"),
             "shape")


def test_random_weight_tower_stores_its_state_like_extract(tmp_path):
    text = Encoder("tiny-vit", "none", "cpu").encode_text(NAMES, TEMPLATES)[0]
    out = tmp_path / "imp.h5"
    res = _import(_npz(tmp_path / "r.npz", text), out, "--text-tower", "tiny-vit:none", "--dtype", "float32")
    assert res.exit_code == 0, res.output
    from featbench.cache import Cache

    with Cache(out) as c:
        record = texttower.cache_tower_record(c)
        assert record["weights"] == "none" and c.has_dataset(texttower.STATE_DATASET)
        assert texttower.load_for_cache(c).sha256 == record["sha256"]


def test_coop_on_an_imported_cache_without_a_tower_says_how_to_add_it(inputs, tmp_path):
    out = tmp_path / "imp.h5"
    assert _import(inputs["full"], out).exit_code == 0
    res = _fit(out, tmp_path / "rows.jsonl")
    assert res.exit_code == 2 and len(_lines(res)) == 1, res.output
    line = _lines(res)[0]
    assert "imported" in line and "--text-tower MODEL:PRETRAINED" in line and "MODEL:/path/to/checkpoint.pt" in line
    assert "re-extract" not in line


def test_text_tower_spec_parser_gives_a_pair_or_one_line():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from featbench.errors import FeatbenchError
    from featbench.importer import parse_tower_spec

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=30))
    def check(spec):
        try:
            model, weights = parse_tower_spec(spec)
        except FeatbenchError as err:
            assert "\n" not in str(err).replace(spec, "") and "MODEL:PRETRAINED" in str(err)
        else:
            assert model and weights and model == model.strip() and ":" not in model
            assert spec.strip().startswith(model)

    check()
    assert parse_tower_spec("ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert parse_tower_spec("tiny-vit:/a/b:c.pt") == ("tiny-vit", "/a/b:c.pt")


@pytest.mark.parametrize("bad", ["missing.txt", "empty.txt", "folder"])
def test_templates_file_that_cannot_serve_is_one_line(ckpts, inputs, tmp_path, bad):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "folder").mkdir()
    out = tmp_path / "imp.h5"
    res = _import(inputs["no-templates"], out, "--text-tower", f"tiny-vit:{ckpts[0]}", "--templates", tmp_path / bad)
    assert res.exit_code == 2 and len(_lines(res)) == 1 and "Traceback" not in res.output, res.output
    assert bad in res.output and not out.exists()
