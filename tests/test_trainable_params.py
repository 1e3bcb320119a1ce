"""Parameter efficiency (issue 19, part 4): each head's trained parameter count, in every row, in
``table --cols params`` and ``plot --x params``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.heads import _REGISTRY, get_head, get_head_class, head_origin, list_heads
from featbench.heads.base import Head, HeadNotFittedError
from featbench.results import KEY_FIELDS, ROW_FIELDS, row_key
from featbench.table_model import format_count, format_count_range
from featbench.testing import toy_problem
from test_protocol import NCMHead, make_cache

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: short schedules: a count is a matter of shapes, not of how long the fit ran
FAST = {"epochs": 2, "n_iter": 3, "max_iter": 5}


def _fit(name: str, problem, **params):
    head = get_head(name)
    head.set_params(**{**{k: v for k, v in FAST.items() if k in head.param_names()}, **params})
    return head.fit(problem.X, problem.y, **problem.context)


def _shapes(problem):
    """(C, D, N, width of pre-projection image features, width of pre-projection text features)."""
    extra = problem.context["extra"]
    return (problem.n_classes, problem.context["text"].shape[-1], len(problem.y),
            extra["image_projection"].shape[0], extra["text_projection"].shape[0])


#: what each head trains, written from its method (not from its attributes): C classes, D feature width,
#: N training images, P pre-projection image width, T pre-projection text width
EXPECTED = {
    "zeroshot": lambda C, D, N, P, T: 0,
    "linear-probe": lambda C, D, N, P, T: C * D + C,  # W and b
    "tip-adapter": lambda C, D, N, P, T: 0,  # the cache is the shots' features
    "tip-adapter-f": lambda C, D, N, P, T: N * D,  # the cache keys
    "taskres": lambda C, D, N, P, T: C * D,  # the residual X
    "clip-adapter": lambda C, D, N, P, T: 2 * D * (D // 4),  # two bias-free layers, reduction 4
    "gda": lambda C, D, N, P, T: 0,
    "lp++": lambda C, D, N, P, T: C * D + C + C,  # W, b and the blend weights a
    "clap": lambda C, D, N, P, T: C * D,  # the prototypes
    "prolip": lambda C, D, N, P, T: P * D,  # the visual projection (its bias frozen)
    "text-projection": lambda C, D, N, P, T: T * D,  # the text projection
    "proker": lambda C, D, N, P, T: 0,
    "ape": lambda C, D, N, P, T: 0,
    "ape-t": lambda C, D, N, P, T: C * D + N,  # residual R on all D channels (feat_num > D here), value weights v
    "transclip": lambda C, D, N, P, T: 0,  # on the zero-shot base
}


def test_every_built_in_head_declares_what_it_trains():
    built_in = [name for name in list_heads() if head_origin(name) == "built-in"]
    for name in built_in:
        assert get_head_class(name).trained_attributes is not None, name
    assert set(EXPECTED) | {"coop", "kgcoop", "cocoop"} == set(built_in)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_count_equals_the_learned_tensors(name):
    problem = toy_problem(get_head_class(name), n_classes=3, shots=4, n_features=16)
    head = _fit(name, problem)
    count = head.trainable_params()
    assert isinstance(count, int) and count == EXPECTED[name](*_shapes(problem))


@pytest.mark.parametrize("name, params, expected", [
    ("taskres", {"base": "linear-probe"}, lambda C, D, N, P, T: C * D + (C * D + C)),  # the base is trained here
    ("transclip", {"base": "linear-probe"}, lambda C, D, N, P, T: C * D + C),  # only the base's
    ("lp++", {"alpha_every": 0}, lambda C, D, N, P, T: C * D + C),  # a never updated: not trained
    ("clip-adapter", {"reduction": 2}, lambda C, D, N, P, T: 2 * D * (D // 2)),
    ("ape-t", {"feat_num": 5}, lambda C, D, N, P, T: C * 5 + N),
])
def test_count_follows_the_settings(name, params, expected):
    problem = toy_problem(get_head_class(name), n_classes=3, shots=4, n_features=16, params=params)
    assert _fit(name, problem, **params).trainable_params() == expected(*_shapes(problem))


def test_tip_adapter_f_count_grows_with_the_shots():
    counts = [_fit("tip-adapter-f", toy_problem(get_head_class("tip-adapter-f"), shots=k)).trainable_params()
              for k in (1, 4)]
    assert counts == [3 * 16, 12 * 16]


@pytest.fixture(scope="module")
def tiny_tower():
    from featbench.encoders import Encoder
    from featbench.texttower import TextTower

    enc = Encoder("tiny-vit", "none", "cpu")
    return TextTower.from_model(enc.model, enc.tokenizer)


@pytest.mark.parametrize("name, params, tokens", [
    ("coop", {"n_ctx": 2, "ctx_init": None}, 2),
    ("kgcoop", {}, 4),  # "a photo of a": four context tokens
    ("cocoop", {}, 4),
])
def test_prompt_learners_count_context_and_meta_net(name, params, tokens, tiny_tower):
    problem = toy_problem(get_head_class(name), n_features=32)
    problem.context["text_tower"] = tiny_tower
    head = _fit(name, problem, **{**params, "epochs": 1})
    W, D = tiny_tower.width, 32
    meta = (D // 16) * D + D // 16 + W * (D // 16) + W if name == "cocoop" else 0  # W1, b1, W2, b2
    assert head.trainable_params() == tokens * W + meta


def test_batched_fits_set_the_count_too():
    from featbench.heads.clap import CLAP
    from featbench.heads.taskres import TaskRes
    from featbench.heads.tip_adapter import TipAdapterF

    for cls, expected in ((TaskRes, 3 * 16), (TipAdapterF, 12 * 16), (CLAP, 3 * 16)):
        problem = toy_problem(cls)
        runs = [(cls(epochs=2, random_state=s), problem.X, problem.y, problem.context) for s in (1, 2)]
        assert [h.trainable_params() for h in cls.fit_batched(runs)] == [expected, expected]


class Undeclared(NCMHead):
    name = "test-undeclared-params"


class Misdeclared(NCMHead):
    name = "test-misdeclared-params"
    trained_attributes = ("weights_",)


def test_unknown_unfitted_and_misdeclared_heads():
    problem = toy_problem(NCMHead)
    assert Undeclared().fit(problem.X, problem.y, **problem.context).trainable_params() is None
    with pytest.raises(HeadNotFittedError):
        get_head("taskres").trainable_params()
    with pytest.raises(FeatbenchError, match="weights_"):
        Misdeclared().fit(problem.X, problem.y, **problem.context).trainable_params()
    assert Head.trained_attributes is None


# ----------------------------------------------------------------------------------------------------
# result rows
# ----------------------------------------------------------------------------------------------------
def test_every_row_records_the_count(tmp_path, monkeypatch):
    """The runner's rows (stacked fits for two seeds) carry the head's count; an undeclared head's is null."""
    from featbench.heads import register_head
    from featbench.runner import run_fit

    register_head(Undeclared.name, Undeclared)
    monkeypatch.setenv("FEATBENCH_BATCH", "1")
    cache, _ = make_cache(tmp_path / "c.h5", n_classes=6, dim=16, n_views=2)
    heads = ["zeroshot", "linear-probe", "taskres", "tip-adapter-f", "clap", Undeclared.name]
    try:
        rows = run_fit([cache], heads=heads, shots=[2], seeds=[1, 2], progress=False, out=tmp_path / "r.jsonl",
                       sets={"taskres.epochs": 2, "tip-adapter-f.epochs": 2, "clap.epochs": 2})
    finally:
        _REGISTRY.pop(Undeclared.name, None)
    C, D, N = 6, 16, 12
    want = {"zeroshot": 0, "linear-probe": C * D + C, "taskres": C * D, "tip-adapter-f": N * D, "clap": C * D,
            Undeclared.name: None}
    assert len(rows) == 12
    for row in rows:
        assert row["trainable_params"] == want[row["head"]], row["head"]
    written = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert all("trainable_params" in r for r in written) and written[0]["trainable_params"] == 0
    assert "trainable_params" in ROW_FIELDS and "trainable_params" not in KEY_FIELDS
    assert row_key({**written[1], "trainable_params": 7}) == row_key(written[1])


def test_base_to_new_rows_carry_the_count(tmp_path):
    from featbench.protocol import Cell, head_target, run_cell

    cache, _ = make_cache(tmp_path / "c.h5", n_classes=6, dim=16, n_views=0)
    cell = Cell(cache=str(cache), head="taskres", head_target=head_target("taskres"), shots=2, seed=1,
                overrides={"epochs": 1}, base_to_new=True)
    rows = run_cell(cell)
    assert {r["classes"] for r in rows} == {"base", "new"}
    assert all(r["trainable_params"] == 3 * 16 for r in rows)  # trained on the 3 base classes


# ----------------------------------------------------------------------------------------------------
# table --cols params
# ----------------------------------------------------------------------------------------------------
def _row(dataset, head, shots, seed, acc, count="absent"):
    row = {"dataset": dataset, "source_dataset": dataset, "model": "RN50", "pretrained": "openai",
           "fingerprint": "fp", "content": "c", "head": head, "params": {}, "selected": {}, "overrides": {},
           "paper_defaults": [], "protocol": "paper", "classes": "all", "shots": shots, "seed": seed, "acc": acc}
    if count != "absent":
        row["trainable_params"] = count
    return row


def _results(tmp_path, old_rows: bool = False):
    rows = []
    for dataset, C in (("caltech101", 100), ("dtd", 47)):
        for shots in (1, 16):
            for seed in (1, 2):
                rows.append(_row(dataset, "zeroshot", shots, seed, 50.0 + seed, 0))
                rows.append(_row(dataset, "taskres", shots, seed, 60.0 + shots, C * 1024))
                rows.append(_row(dataset, "tip-adapter-f", shots, seed, 61.0 + shots, C * shots * 1024))
                rows.append(_row(dataset, "clap", shots, seed, 55.0, "absent" if old_rows else None))
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _table(*args):
    result = CliRunner().invoke(app, ["table", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_table_cols_params_markdown(tmp_path):
    path = _results(tmp_path)
    text = _table(path, "--cols", "params", "--rows", "head")
    lines = text.splitlines()
    assert lines[0] == "| head | Trainable params | rank | 1-shot | 16-shot |"
    assert lines[2].startswith("| Zero-shot CLIP | 0 |")
    assert "| Tip-Adapter-F | 75.3K–1.2M |" in text  # (100 + 47) / 2 classes x shots x 1024
    assert "| TaskRes | 75.3K |" in text  # 73.5 x 1024 = 75264
    assert "| CLAP | ? |" in text and "? trainable params unknown" in text  # null: unknown, never 0
    assert "the mean of the 2 datasets' counts" in text


def test_table_cols_params_blocks_per_dataset_with_exact_counts(tmp_path):
    path = _results(tmp_path)
    csv = _table(path, "--cols", "params", "--format", "csv").splitlines()  # --rows dataset: a block each
    assert csv[0].startswith("dataset,head,trainable params min,trainable params max,rank,1-shot mean")
    assert "caltech101,TaskRes,102400,102400," in "\n".join(csv)
    assert "dtd,Tip-Adapter-F,48128,770048," in "\n".join(csv)
    assert "Average,TaskRes,75264,75264," in "\n".join(csv)
    assert "caltech101,CLAP,,," in "\n".join(csv)
    latex = _table(path, "--cols", "params", "--format", "latex", "--datasets", "dtd")
    assert "Head & Trainable params & Rank & 1-shot & 16-shot" in latex and "48.1K--770.0K" in latex


def test_table_cols_params_refuses_other_layouts(tmp_path):
    result = CliRunner().invoke(app, ["table", str(_results(tmp_path)), "--cols", "params", "--rows", "shots"])
    assert result.exit_code == 2 and "--rows head" in result.output


def test_old_rows_without_the_field_load_as_unknown(tmp_path):
    from featbench.tables import TABLE_FIELDS, aggregate, load_results

    df = load_results(_results(tmp_path, old_rows=True), fields=TABLE_FIELDS)
    table = aggregate(df, rows="head", cols="params", names="registry")
    assert math.isnan(table.params.loc["clap", "low"]) and table.params.loc["zeroshot", "low"] == 0
    assert table.any_unknown_params
    plain = aggregate(df, rows="dataset", cols="shots")  # other layouts are untouched by the new field
    assert plain.params is None


def test_a_partly_unknown_cell_is_unknown(tmp_path):
    from featbench.tables import aggregate, load_results

    path = tmp_path / "r.jsonl"
    rows = [_row("dtd", "taskres", 1, 1, 60.0, 47), _row("dtd", "taskres", 1, 2, 61.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert math.isnan(aggregate(load_results(path), rows="head", cols="params").params["low"].iat[0])


def test_a_head_missing_from_a_dataset_keeps_its_average_row(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [_row(d, "zeroshot", 1, 1, 50.0, 0) for d in ("dtd", "eurosat")] + [_row("dtd", "taskres", 1, 1, 60.0, 47)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "| TaskRes | — | — | — |" in _table(path, "--cols", "params", "--rows", "head")
    blocks = _table(path, "--cols", "params")
    assert "| dtd | TaskRes | 47 |" in blocks and "| Average | TaskRes | — | — | — |" in blocks
    assert "| eurosat | TaskRes |" not in blocks and "unknown" not in blocks
    from featbench.plots import make_params_figure
    from featbench.tables import load_results

    title = make_params_figure(load_results(path), names="paper").get_suptitle()
    assert "not drawn (no Average cell: not run on every dataset): TaskRes" in title


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1K", [3]])
def test_a_bad_count_is_an_error_naming_the_line(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row("dtd", "taskres", 1, 1, 60.0, bad)) + "\n")
    result = CliRunner().invoke(app, ["table", str(path), "--cols", "params"])
    assert result.exit_code == 2 and "r.jsonl:1: 'trainable_params'" in result.output


@pytest.mark.parametrize("n, text", [(0, "0"), (512, "512"), (999, "999"), (8192, "8.2K"), (999_950, "1.0M"),
                                     (1_025_000, "1.0M"), (16_384_000, "16.4M"), (2.5e9, "2.5B"), (75263.6, "75.3K")])
def test_format_count(n, text):
    assert format_count(n) == text


_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9}


def _parse(text: str) -> float:
    return float(text[:-1]) * _UNITS[text[-1]] if text[-1] in _UNITS else float(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**13), st.integers(min_value=0, max_value=10**13))
def test_format_count_is_close_and_ordered(a, b):
    low, high = sorted((a, b))
    for n in (low, high):
        assert abs(_parse(format_count(n)) - n) <= max(0.5, 0.05 * n)
    assert _parse(format_count(low)) <= _parse(format_count(high))
    shown = format_count_range(low, high)
    assert shown == format_count(low) if format_count(low) == format_count(high) else "–" in shown
    assert format_count_range(float("nan"), high) == "?"


# ----------------------------------------------------------------------------------------------------
# plot --x params
# ----------------------------------------------------------------------------------------------------
def test_plot_x_params_writes_a_log_axis_figure(tmp_path):
    from featbench.plots import make_params_figure
    from featbench.tables import load_results

    path = _results(tmp_path)
    out = tmp_path / "figs"
    result = CliRunner().invoke(app, ["plot", str(path), "--x", "params", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for suffix in (".png", ".pdf"):
        assert (out / f"accuracy-vs-params{suffix}").stat().st_size > 1000
    fig = make_params_figure(load_results(path), names="paper")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["1-shot (Average)", "16-shot (Average)"]
    for ax in axes:
        assert ax.get_xscale() == "log"
        floor = ax.get_xticks()[0]
        assert ax.xaxis.get_major_formatter()(floor, 0) == "0"
        assert ax.get_xlim()[0] < floor  # the zero-parameter heads sit inside the axis
        zero = [ln for ln in ax.get_lines() if ln.get_label() == "Zero-shot CLIP"]
        assert zero and list(zero[0].get_xdata()) == [floor]
    assert "not drawn (trainable params unknown): CLAP" in fig.get_suptitle()


def test_plot_x_params_without_any_count_says_why(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row("dtd", "taskres", 1, 1, 60.0)) + "\n")
    result = CliRunner().invoke(app, ["plot", str(path), "--x", "params", "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "trainable_params" in result.output
    result = CliRunner().invoke(app, ["plot", str(path), "--x", "flops", "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "--x must be one of shots, params" in result.output
