"""Issue 17: labels from what the user changed, fallbacks and oracles that never win, paper names, stable
figures, tables at scale, one-dataset tables, one base-to-new layout, LaTeX that compiles in every layout."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.results import row_key
from featbench.table_render import render, render_groups
from featbench.tables import AVERAGE, PER_CLASS_FIELDS, TABLE_FIELDS, aggregate, aggregate_by_encoder, load_results

ROOT = Path(__file__).resolve().parents[1]


def row(dataset, head, shots, seed, acc, *, params=None, overrides=None, paper_defaults=None, **kw):
    """A result row as featbench writes it now (``overrides=None``: as older versions wrote it)."""
    out = dict(dataset=dataset, source_dataset=dataset, model="ViT-B-32", pretrained="openai", fingerprint="f",
               content="c", cache=f"cache/{dataset}.h5", head=head, params=params or {}, selected={},
               protocol="paper", classes="all", shots=shots, seed=seed, acc=acc, mean_per_class_recall=acc,
               n_test=100, fit_seconds=0.1, views_used=0, notes=[], featbench_version="0.9.0",
               timestamp="2026-12-06T00:00:00+00:00")
    if overrides is not None:
        out.update(overrides=overrides, paper_defaults=paper_defaults or [])
    out.update(kw)
    return out


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def clip_adapter_rows(new_style=True):
    """Paper-default CLIP-Adapter (per-shot epochs 50 / 100) and one run with --set clip-adapter.epochs=5."""
    rows = []
    for shots, epochs in ((1, 50), (2, 100)):
        for seed in (1, 2):
            for ds, base in (("caltech101", 80.0), ("dtd", 50.0)):
                paper = dict(overrides={}, paper_defaults=["epochs"]) if new_style else {}
                mine = dict(overrides={"epochs": 5}, paper_defaults=[]) if new_style else {}
                rows.append(row(ds, "clip-adapter", shots, seed, base + shots + seed, params={"epochs": epochs, "alpha": 0.2}, **paper))
                rows.append(row(ds, "clip-adapter", shots, seed, base + seed, params={"epochs": 5, "alpha": 0.2}, **mine))
                rows.append(row(ds, "zeroshot", shots, seed, base - 5, **(dict(overrides={}) if new_style else {})))
    return rows


# -- item 1: labels from what the user changed ---------------------------------------------------------------
def test_paper_default_runs_form_one_row_and_overrides_are_marked():
    t = aggregate(pd.DataFrame(clip_adapter_rows()), rows="head", cols="shots", names="paper")
    assert list(t.mean.index) == ["Zero-shot CLIP", "CLIP-Adapter", "CLIP-Adapter (epochs=5)"]
    assert not t.mean.loc["CLIP-Adapter"].isna().any()  # one row across shots (epochs 50 and 100)
    assert t.rank.loc["CLIP-Adapter"] == 1
    md = render(t, "markdown")
    assert "(k=v) in a label: a parameter the user set" in md


def test_an_override_every_row_shares_is_still_marked_and_the_protocol_says_so():
    rows = [row(ds, "taskres", s, 1, 70.0 + s, params={"epochs": 20, "lr": 2e-3}, overrides={"epochs": 20},
                paper_defaults=["lr", "alpha"]) for ds in ("caltech101", "dtd") for s in (1, 2)]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots", protocol="paper", names="paper")
    assert list(t.mean.index) == ["TaskRes (epochs=20)"]
    assert "paper protocol with overrides" in render(t, "markdown")
    plain = [dict(r, overrides={}, params={"lr": 2e-3}) for r in rows]
    t = aggregate(pd.DataFrame(plain), rows="head", cols="shots", protocol="paper", names="paper")
    md = render(t, "markdown")
    assert list(t.mean.index) == ["TaskRes"] and "paper protocol." in md and "overrides" not in md


def test_rows_without_overrides_keep_the_old_labels():
    t = aggregate(pd.DataFrame(clip_adapter_rows(new_style=False)), rows="head", cols="shots")
    assert {"clip-adapter (epochs=50)", "clip-adapter (epochs=100)", "clip-adapter (epochs=5)"} <= set(t.mean.index)


def test_resume_identity_ignores_the_new_fields():
    new = row("dtd", "taskres", 1, 1, 70.0, params={"epochs": 20}, overrides={"epochs": 20}, paper_defaults=["lr"],
              test_selection=False)
    old = {k: v for k, v in new.items() if k not in ("overrides", "paper_defaults", "test_selection")}
    assert row_key(new) == row_key(old)


def test_fit_rows_record_overrides_and_paper_defaults(tmp_path):
    from tests.test_protocol import make_cache

    from featbench.protocol import Cell, close_cached, head_target, run_cell

    path, _ = make_cache(tmp_path / "c.h5")
    try:
        (r,) = run_cell(Cell(cache=str(path), head="taskres", head_target=head_target("taskres"),
                             overrides={"epochs": 1}, shots=2, seed=1))
    finally:
        close_cached()
    assert r["overrides"] == {"epochs": 1}
    assert r["paper_defaults"] == ["alpha", "lr"]  # caltech101's, per dataset; epochs was set by the user
    assert r["test_selection"] is False


# -- item 2: fallbacks and oracles never win -----------------------------------------------------------------
def b2n_rows():
    """TaskRes's New is zero-shot CLIP's (the fallback), and its H beats zero-shot's: the issue's case."""
    rows = []
    for seed in (1, 2):
        rows.append(row("imagenet", "zeroshot", 2, seed, 70.0, classes="base", fallback=None))
        rows.append(row("imagenet", "zeroshot", 2, seed, 60.0, classes="new", fallback=None))
        rows.append(row("imagenet", "taskres", 2, seed, 73.0, classes="base", fallback=None))
        rows.append(row("imagenet", "taskres", 2, seed, 60.0, classes="new", fallback="zeroshot"))
    return rows


def test_base_to_new_fallback_cells_are_marked_never_bold():
    from featbench.b2n_table import aggregate_base_to_new

    t = aggregate_base_to_new(pd.DataFrame(b2n_rows()), names="paper")
    assert t.mean.loc[("TaskRes", "imagenet"), "H"] > t.mean.loc[("Zero-shot CLIP", "imagenet"), "H"]
    md = render(t, "markdown")
    taskres = next(ln for ln in md.splitlines() if ln.startswith("| TaskRes"))
    zeroshot = next(ln for ln in md.splitlines() if ln.startswith("| Zero-shot CLIP"))
    assert "**73.00**" in taskres  # Base is honest: bold
    assert "60.00‡" in taskres and "‡" in taskres.split("|")[-2] and "**" not in taskres.split("|")[-2]
    assert "**64.62**" in zeroshot  # zero-shot's own H is the best honest H
    assert "‡ zero-shot CLIP fallback" in md
    csv = render(t, "csv").splitlines()
    header = csv[0].split(",")
    line = next(ln.split(",") for ln in csv if ln.startswith("TaskRes"))
    assert line[header.index("New fallback")] == "1" and line[header.index("H fallback")] == "1"
    assert line[header.index("Base fallback")] == "0"
    tex = render(t, "latex")
    assert r"$^\ddagger$" in tex and r"\textbf{64.62}" in tex


def test_oracle_and_test_selection_rows_are_never_bold_or_ranked():
    rows = [row(ds, "zeroshot", 1, s, 60.0) for ds in ("caltech101", "dtd") for s in (1, 2)]
    rows += [row(ds, "tip-adapter-f", 1, s, 90.0, protocol="oracle") for ds in ("caltech101", "dtd") for s in (1, 2)]
    rows += [row(ds, "gda", 1, s, 95.0, protocol="val", test_selection=True) for ds in ("caltech101", "dtd") for s in (1, 2)]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")
    assert t.rank.loc["zeroshot"] == 1
    assert math.isnan(t.rank.loc["tip-adapter-f"]) and math.isnan(t.rank.loc["gda"])
    md = render(t, "markdown")
    assert "**60.00**" in next(ln for ln in md.splitlines() if ln.startswith("| zeroshot"))
    for head in ("tip-adapter-f", "gda"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {head}"))
        assert "**" not in line and "†" in line


def test_transductive_rows_are_marked_and_never_ranked_against_inductive_ones():
    rows = [row(ds, "zeroshot", 1, s, 60.0) for ds in ("caltech101", "dtd") for s in (1, 2)]
    rows += [row(ds, "transclip", 1, s, 70.0, transductive=True) for ds in ("caltech101", "dtd") for s in (1, 2)]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")
    assert t.rank.loc["zeroshot"] == 1 and math.isnan(t.rank.loc["transclip"])
    md = render(t, "markdown")
    line = next(ln for ln in md.splitlines() if ln.startswith("| transclip"))
    assert "**" not in line and "§" in line and "§ transductive" in md
    assert "**60.00**" in next(ln for ln in md.splitlines() if ln.startswith("| zeroshot"))
    csv_text = render(t, "csv")
    assert "1-shot transductive" in csv_text.splitlines()[0]
    assert "$^\\S$" in render(t, "latex")
    plain = aggregate(pd.DataFrame(rows[:4]), rows="head", cols="shots")
    assert "transductive" not in render(plain, "csv")  # the column appears only where such rows are


def test_the_cli_table_marks_transductive_rows_and_names_mixed_fit_devices(tmp_path):
    rows = [row(ds, "zeroshot", 1, s, 60.0, fit_device="cpu") for ds in ("caltech101", "dtd") for s in (1, 2)]
    rows += [row(ds, "transclip", 1, s, 70.0, transductive=True, fit_device="cuda NVIDIA H100")
             for ds in ("caltech101", "dtd") for s in (1, 2)]
    res = CliRunner().invoke(app, ["table", str(write(tmp_path / "r.jsonl", rows)), "--rows", "head", "--cols", "shots",
                                   "--format", "markdown", "--names", "registry"])
    assert res.exit_code == 0, res.output
    assert "§" in res.output and "Fit devices: cpu (4 rows), cuda NVIDIA H100 (4 rows)." in res.output
    same = [r for r in rows if r["head"] == "zeroshot"]
    res = CliRunner().invoke(app, ["table", str(write(tmp_path / "s.jsonl", same)), "--format", "markdown"])
    assert res.exit_code == 0 and "Fit devices" not in res.output


# -- item 5: paper names, stable figures -----------------------------------------------------------------------
def test_cli_uses_paper_names_unless_told_registry(tmp_path):
    path = write(tmp_path / "r.jsonl", clip_adapter_rows())
    out = CliRunner().invoke(app, ["table", str(path), "--rows", "head"]).output
    assert "| CLIP-Adapter |" in out and "| Zero-shot CLIP |" in out
    out = CliRunner().invoke(app, ["table", str(path), "--rows", "head", "--names", "registry"]).output
    assert "| clip-adapter |" in out and "CLIP-Adapter" not in out
    res = CliRunner().invoke(app, ["table", str(path), "--names", "nope"])
    assert res.exit_code == 2 and "--names" in res.output
    out = CliRunner().invoke(app, ["table", str(path), "--rows", "head", "--heads", "CLIP-Adapter"]).output
    assert "CLIP-Adapter" in out and "Zero-shot" not in out


def test_each_head_keeps_its_colour_and_marker_in_every_figure(tmp_path):
    from featbench.plots import head_style, make_figure

    rows = clip_adapter_rows() + [dict(r, head="taskres") for r in clip_adapter_rows() if r["head"] == "zeroshot"]
    df = pd.DataFrame(rows)

    def styles(fig):
        return {ln.get_label(): (ln.get_color(), ln.get_marker()) for ln in fig.axes[0].get_lines()}

    everything = styles(make_figure(df, names="paper"))
    only_two = styles(make_figure(df, names="paper", heads=["taskres", "clip-adapter"]))
    assert set(only_two) == {"TaskRes", "CLIP-Adapter", "CLIP-Adapter (epochs=5)"}
    for label, style in only_two.items():
        assert everything[label] == style
    assert everything["TaskRes"] != everything["Zero-shot CLIP"]
    assert head_style("taskres") == head_style("taskres") and head_style("taskres") != head_style("coop")
    one_panel = make_figure(df, datasets=["dtd"], shots=[1])
    assert [ax.get_title() for ax in one_panel.axes if ax.get_visible()] == ["dtd"]
    with pytest.raises(FeatbenchError, match="nothing to plot after filtering"):
        make_figure(df, heads=["coop"])
    path = write(tmp_path / "r.jsonl", rows)
    res = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "fig"), "--heads", "TaskRes",
                                   "--datasets", "dtd", "--shots", "1,2"])
    assert res.exit_code == 0, res.output and (tmp_path / "fig" / "accuracy-vs-shots.png").exists()


# -- item 6: tables at scale -------------------------------------------------------------------------------------
def test_a_conflict_is_reported_as_soon_as_it_is_read(tmp_path):
    rows = clip_adapter_rows()
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(dict(rows[0], acc=1.0)) + "\n" + "not json\n" * 3)
    with pytest.raises(FeatbenchError, match=r"conflicting result rows .*r.jsonl:1 \(acc 82\), .*r.jsonl:2 \(acc 1\)"):
        load_results(path)  # before the invalid lines after it


def test_rows_are_kept_compactly(tmp_path):
    rows = clip_adapter_rows()
    rows[0]["per_class"] = {"correct": [1, 2], "total": [2, 2]}
    path = write(tmp_path / "r.jsonl", rows)
    df = load_results(path, fields=TABLE_FIELDS)
    assert "notes" not in df.columns and "per_class" not in df.columns and "timestamp" not in df.columns
    same = [i for i, r in enumerate(rows) if r["params"] == rows[0]["params"]]
    assert df["params"].iat[same[0]] is df["params"].iat[same[1]]  # one stored object per setting
    assert df["head"].iat[0] is df["head"].iat[3]
    assert "per_class" in load_results(path, fields=PER_CLASS_FIELDS).columns
    full = load_results(path)
    assert {"notes", "timestamp", "per_class", "_file", "_line", "_order"} <= set(full.columns)
    assert render(aggregate(df, rows="head"), "csv") == render(aggregate(full, rows="head"), "csv")


@pytest.mark.slow
def test_table_scale_benchmark_prints_both_figures(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table_scale.py"), "--rows", "3000"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    table = next(ln for ln in lines if ln.startswith("featbench table"))
    pandas_line = next(ln for ln in lines if ln.startswith("pandas.read_json"))
    for line in (table, pandas_line):
        assert " s " in line and "peak RSS" in line and "exit code" not in line


# -- item 7: one dataset, one base-to-new layout, compare, LaTeX -------------------------------------------------
def test_one_dataset_table_has_no_duplicate_average():
    rows = [r for r in clip_adapter_rows() if r["dataset"] == "dtd"]
    t = aggregate(pd.DataFrame(rows), rows="dataset", cols="shots")
    assert AVERAGE not in [k[-1] if isinstance(k, tuple) else k for k in t.mean.index]
    assert "Dataset: dtd." in render(t, "markdown")
    t = aggregate(pd.DataFrame(rows), rows="head", cols="dataset")
    assert list(t.mean.columns) == ["dtd"]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")  # averaged over the one dataset: fine
    assert not t.mean.isna().all().all()


def test_base_to_new_has_one_layout_in_every_format():
    from featbench.b2n_table import aggregate_base_to_new

    t = aggregate_base_to_new(pd.DataFrame(b2n_rows()), names="paper")
    md = render(t, "markdown").splitlines()
    assert md[0] == "| head | dataset | Base | New | H |"
    assert render(t, "csv").startswith("head,dataset,Base mean")
    tex = render(t, "latex")
    assert r"Head & Dataset & Base & New & H \\" in tex and r"\multicolumn" not in tex
    assert r"TaskRes & imagenet & \textbf{73.00}" in tex


def test_compare_cuts_long_class_names():
    from featbench.perclass import MAX_CLASSNAME, Comparison, render as render_compare

    long = "a very long class name " * 6
    c = Comparison(encoder="e", dataset="d", shots=1, seeds=[1], classnames=[long, "short"],
                   acc_a=[10.0, 50.0], acc_b=[60.0, 40.0], total=[10, 10])
    text = render_compare([c], "zeroshot", "taskres")
    assert max(len(ln) for ln in text.splitlines()[1:]) < MAX_CLASSNAME + 50
    assert long[:MAX_CLASSNAME - 1] + "…" in text


def _every_latex_layout():
    """(name, standalone LaTeX) for each layout featbench writes."""
    from featbench.b2n_table import aggregate_base_to_new

    rows = clip_adapter_rows()
    rows += [row(ds, "tip-adapter-f", s, seed, 90.0, protocol="oracle", overrides={}) for ds in ("caltech101", "dtd")
             for s in (1, 2) for seed in (1, 2)]
    rows = [dict(r, dataset="my_data&co%#", source_dataset="my_data&co%#") if r["dataset"] == "dtd" else r for r in rows]
    df = pd.DataFrame(rows)
    other = pd.DataFrame([dict(r, model="RN50") for r in rows])
    yield "plain", render(aggregate(df, rows="dataset", cols="head", shots=[1], names="paper"), "latex", standalone=True)
    yield "ranked", render(aggregate(df, rows="head", cols="shots", names="paper"), "latex", standalone=True)
    yield "blocks", render(aggregate(df, rows="dataset", cols="shots"), "latex", standalone=True)
    yield "encoders", render_groups(aggregate_by_encoder(pd.concat([df, other]), rows="head", cols="shots"),
                                    "latex", standalone=True)
    yield "base-to-new", render(aggregate_base_to_new(pd.DataFrame(b2n_rows()), names="paper"), "latex",
                                standalone=True)


def test_every_latex_layout_compiles(tmp_path):
    """Runs in CI (.ci/run installs TeX and sets FEATBENCH_REQUIRE_LATEX=1); skipped elsewhere without pdflatex."""
    if shutil.which("pdflatex") is None:
        if os.environ.get("FEATBENCH_REQUIRE_LATEX"):
            pytest.fail("pdflatex not found but FEATBENCH_REQUIRE_LATEX is set: install texlive-latex-base and "
                        "texlive-latex-recommended")
        pytest.skip("pdflatex not installed")
    layouts = dict(_every_latex_layout())
    assert r"$^\dagger$" in layouts["ranked"] and r"$^\ddagger$" in layouts["base-to-new"]
    for name, tex in layouts.items():
        (tmp_path / f"{name}.tex").write_text(tex, encoding="utf-8")
        res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{name}: " + res.stdout[-2000:]
        assert (tmp_path / f"{name}.pdf").stat().st_size > 1000
