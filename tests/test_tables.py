"""Tables on hand-made result rows: means, ddof=0 std, the partial-average rule, variants, LaTeX, bold, oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.tables import AVERAGE, aggregate, latex_escape, load_results, render


def row(dataset, head, shots, seed, acc, *, protocol="paper", params=None, selected=None, source=None, **kw):
    return dict(dataset=dataset, source_dataset=source or dataset, model="RN50", pretrained="openai",
                fingerprint="f", cache=f"cache/{dataset}.h5", head=head, params=params or {},
                selected=selected or {}, protocol=protocol, shots=shots, seed=seed, acc=acc,
                mean_per_class_recall=acc - 1, n_test=100, fit_seconds=0.1, views_used=0, notes=[],
                featbench_version="0.1.0", timestamp="2026-01-01T00:00:00Z", **kw)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def rows():
    out = []
    accs = {("dtd", 1): [50, 52, 57], ("dtd", 2): [60, 61, 62], ("eurosat", 1): [70, 70, 70], ("eurosat", 2): [80, 82, 84]}
    for (ds, shots), vals in accs.items():
        for seed, a in zip((1, 2, 3), vals):
            out.append(row(ds, "zeroshot", shots, seed, float(a)))
            out.append(row(ds, "taskres", shots, seed, float(a) + 1))
    return out


def test_mean_and_population_std(rows):
    t = aggregate(pd.DataFrame(rows), rows="dataset", cols="shots", heads=["zeroshot"])
    assert t.mean.loc["dtd", 1] == pytest.approx(53.0)
    assert t.std.loc["dtd", 1] == pytest.approx(np.std([50, 52, 57], ddof=0))  # not ddof=1
    assert t.std.loc["dtd", 1] != pytest.approx(np.std([50, 52, 57], ddof=1))
    assert t.n.loc["dtd", 1] == 3
    # Average over datasets: mean of dataset means; std over seeds of the per-seed average
    assert t.mean.loc[AVERAGE, 2] == pytest.approx((61 + 82) / 2)
    per_seed = [(60 + 80) / 2, (61 + 82) / 2, (62 + 84) / 2]
    assert t.std.loc[AVERAGE, 2] == pytest.approx(np.std(per_seed))


def test_partial_average_is_missing_not_partial(rows):
    rows = [r for r in rows if not (r["dataset"] == "eurosat" and r["shots"] == 2 and r["head"] == "taskres")]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")
    assert math.isnan(t.mean.loc["taskres", 2])
    assert t.mean.loc["zeroshot", 2] == pytest.approx((61 + 82) / 2)
    md = render(t, "markdown")
    assert "—" in md.splitlines()[3]  # the taskres row shows the gap
    assert math.isnan(t.rank.loc["taskres"])  # unranked: it has a missing cell


def test_rank_column_by_head(rows):
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")
    assert list(t.rank) == [2.0, 1.0]  # zeroshot, taskres (taskres is +1 everywhere)
    md = render(t, "markdown")
    assert md.splitlines()[0].startswith("| head | rank |")


def test_bold_best_and_determinism(rows):
    df = pd.DataFrame(rows)
    t = aggregate(df, rows="head", cols="shots")
    md = render(t, "markdown")
    taskres_line = next(l for l in md.splitlines() if l.startswith("| taskres"))
    assert "**" in taskres_line and "**" not in next(l for l in md.splitlines() if l.startswith("| zeroshot"))
    tex = render(t, "latex")
    assert r"\textbf{" in tex
    # shuffled input, same output
    shuffled = df.sample(frac=1.0, random_state=0)
    for fmt in ("csv", "latex", "markdown"):
        assert render(aggregate(shuffled, rows="head", cols="shots"), fmt) == render(t, fmt)


def test_latex_booktabs_and_escaping(rows):
    rows = [dict(r, dataset="my_data&co%#") if r["dataset"] == "dtd" else r for r in rows]
    for r in rows:
        r["source_dataset"] = r["dataset"]
    tex = render(aggregate(pd.DataFrame(rows), rows="dataset", cols="head", shots=[1]), "latex")
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{table}"):
        assert cmd in tex
    assert r"my\_data\&co\%\#" in tex
    assert "my_data" not in tex
    assert "±" not in tex and r"$\pm$" in tex
    body = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    n_cols = len(tex.split(r"\begin{tabular}{")[1].split("}")[0])
    for line in body.splitlines():
        if line.endswith(r"\\") and not line.startswith(r"\multicolumn"):
            assert line.count(" & ") == n_cols - 1, line
    standalone = render(aggregate(pd.DataFrame(rows)), "latex", standalone=True)
    assert standalone.startswith(r"\documentclass") and r"\usepackage{booktabs}" in standalone
    assert standalone.rstrip().endswith(r"\end{document}")
    assert latex_escape("a_b~c^d\\") == r"a\_b\textasciitilde{}c\textasciicircum{}d\textbackslash{}"


def test_oracle_cells_marked(rows):
    rows = rows + [row("dtd", "tip-adapter-f", 1, s, 60.0, protocol="oracle") for s in (1, 2, 3)]
    rows += [row("eurosat", "tip-adapter-f", 1, s, 60.0, protocol="oracle") for s in (1, 2, 3)]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")
    md = render(t, "markdown")
    line = next(l for l in md.splitlines() if l.startswith("| tip-adapter-f"))
    assert "†" in line
    assert "† hyperparameters selected on the test set (oracle protocol)" in md
    assert "†" not in next(l for l in md.splitlines() if l.startswith("| zeroshot"))
    tex = render(t, "latex")
    assert r"$^\dagger$" in tex and "oracle protocol" in tex
    csv_line = next(l for l in render(t, "csv").splitlines() if l.startswith("tip-adapter-f"))
    assert csv_line.split(",")[5] == "1"  # the 1-shot oracle flag column
    # --protocol filters
    assert "tip-adapter-f" not in render(aggregate(pd.DataFrame(rows), rows="head", protocol="paper"), "csv")


def test_seed_count_note_or_per_cell(rows):
    md = render(aggregate(pd.DataFrame(rows), rows="head", cols="shots"), "markdown")
    assert "over 3 seeds" in md and "(3)" not in md
    rows = [r for r in rows if not (r["head"] == "zeroshot" and r["dataset"] == "dtd" and r["seed"] == 3)]
    md = render(aggregate(pd.DataFrame(rows), rows="dataset", cols="shots"), "markdown")
    assert "(2)" in md and "(3)" in md


def test_param_variants_not_averaged_together(rows):
    extra = []
    for r in rows:
        if r["head"] == "taskres":
            extra.append(dict(r, params={"alpha": 0.5, "epochs": 100}))
            extra.append(dict(r, params={"alpha": 1.0, "epochs": 100}, acc=r["acc"] + 10))
    # per-dataset defaults (lr differs by dataset) are not variants
    for r in extra:
        r["params"] = dict(r["params"], lr=2e-4 if r["dataset"] == "dtd" else 2e-3)
    t = aggregate(pd.DataFrame(extra), rows="head", cols="shots")
    assert list(t.mean.index) == ["taskres (alpha=0.5)", "taskres (alpha=1)"]
    assert t.mean.loc["taskres (alpha=1)", 1] - t.mean.loc["taskres (alpha=0.5)", 1] == pytest.approx(10)


def test_selected_params_are_not_identity():
    rows = [row("dtd", "linear-probe", 1, s, 50.0 + s, params={"C": c}, selected={"C": c})
            for s, c in ((1, 0.1), (2, 10.0))]
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots")
    assert list(t.mean.index) == ["linear-probe"]
    assert t.n.iloc[0, 0] == 2


def test_domain_generalisation_rows_labelled_by_target():
    rows = [row("imagenet", "zeroshot", 16, 1, 60.0)]
    rows += [row(t, "zeroshot", 16, 1, 50.0, source="imagenet") for t in ("imagenetv2", "imagenet_a")]
    t = aggregate(pd.DataFrame(rows), rows="dataset", cols="head")
    assert list(t.mean.index) == ["imagenet", "imagenetv2", "imagenet_a", AVERAGE]


def test_load_results_errors(tmp_path, rows):
    with pytest.raises(FeatbenchError, match="not found"):
        load_results([tmp_path / "nope.jsonl"])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(FeatbenchError, match="empty"):
        load_results([tmp_path / "empty.jsonl"])
    (tmp_path / "bad.jsonl").write_text("{not json}\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(FeatbenchError, match=r"bad.jsonl:1: not valid JSON"):
        load_results([tmp_path / "bad.jsonl"])
    (tmp_path / "keys.jsonl").write_text('{"acc": 1}\n')
    with pytest.raises(FeatbenchError, match="lacks dataset"):
        load_results([tmp_path / "keys.jsonl"])
    # a run killed mid-write leaves a partial last line: skipped, like the runner does
    good = write(tmp_path / "partial.jsonl", rows[:2])
    good.write_text(good.read_text() + '{"dataset": "dt')
    assert len(load_results([good])) == 2


def test_cli_table(tmp_path, rows):
    path = write(tmp_path / "r.jsonl", rows)
    runner = CliRunner()
    res = runner.invoke(app, ["table", str(path), "--rows", "head", "--cols", "shots", "--format", "latex"])
    assert res.exit_code == 0, res.output
    assert r"\toprule" in res.output
    res = runner.invoke(app, ["table", str(path), "--format", "csv", "--out", str(tmp_path / "t.csv")])
    assert res.exit_code == 0
    assert (tmp_path / "t.csv").read_text().startswith("head,dataset,")
    res = runner.invoke(app, ["table", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["table", str(path), "--format", "html"])
    assert res.exit_code == 2 and "--format" in res.output


def test_table_command_does_not_import_torch(tmp_path, rows):
    import subprocess
    import sys

    path = write(tmp_path / "r.jsonl", rows)
    code = ("import sys; from featbench.cli import app\n"
            "try:\n    app(['table', %r])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')") % str(path)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_head_blocks_bold_best_head_per_cell(rows):
    t = aggregate(pd.DataFrame(rows), rows="dataset", cols="shots")
    assert t.block_dim == "head"
    md = render(t, "markdown").splitlines()
    # taskres beats zeroshot in every (dataset, shots) cell: bold only in taskres lines
    assert all("**" not in l for l in md if l.startswith("| zeroshot"))
    assert all(l.count("**") == 4 for l in md if l.startswith("| taskres"))


def test_bad_dimensions_and_format(rows):
    df = pd.DataFrame(rows)
    with pytest.raises(FeatbenchError, match="must differ"):
        aggregate(df, rows="head", cols="head")
    with pytest.raises(FeatbenchError, match="--rows"):
        aggregate(df, rows="model")
    with pytest.raises(FeatbenchError, match="--format"):
        render(aggregate(df), "html")
    with pytest.raises(FeatbenchError, match="--metric"):
        aggregate(df, metric="top5")
    with pytest.raises(FeatbenchError, match="no result rows with --protocol oracle"):
        aggregate(df, protocol="oracle")


@pytest.mark.skipif(__import__("shutil").which("pdflatex") is None, reason="pdflatex not installed")
def test_standalone_latex_compiles(rows, tmp_path):
    """The standalone output (escaped names, oracle dagger, bold, booktabs) builds a PDF with pdflatex."""
    import subprocess

    rows = [dict(r, dataset="my_data&co%#", source_dataset="my_data&co%#") if r["dataset"] == "dtd" else r for r in rows]
    rows += [row(ds, "tip-adapter-f", 1, s, 60.0, protocol="oracle") for ds in ("my_data&co%#", "eurosat") for s in (1, 2, 3)]
    (tmp_path / "t.tex").write_text(render(aggregate(pd.DataFrame(rows), rows="dataset", cols="head"), "latex",
                                           standalone=True), encoding="utf-8")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_dataset_filter(rows):
    t = aggregate(pd.DataFrame(rows), rows="head", cols="shots", datasets=["dtd"])
    md = render(t, "markdown")
    zs = next(l for l in md.splitlines() if l.startswith("| zeroshot"))
    assert "53.00" in zs  # dtd 1-shot mean of 50, 52, 57 only
    with pytest.raises(FeatbenchError, match="--datasets"):
        aggregate(pd.DataFrame(rows), datasets=["nope"])


# -- encoders, duplicates, validation, escaping ------------------------------------------------------------
def test_never_averages_across_encoders(tmp_path, rows):
    vit = [dict(r, model="ViT-B-16", fingerprint="g", acc=r["acc"] + 20) for r in rows if r["dataset"] == "dtd"]
    rn = [r for r in rows if r["dataset"] == "eurosat"]
    df = pd.DataFrame(rn + vit)
    from featbench.tables import aggregate_by_encoder, render_groups

    groups = aggregate_by_encoder(df, rows="head", cols="shots")
    assert [g for g, _ in groups] == ["RN50/openai", "ViT-B-16/openai"]
    rn_t = dict(groups)["RN50/openai"]
    assert rn_t.mean.loc["zeroshot", 1] == pytest.approx(70.0)  # eurosat only, not mixed with ViT dtd
    md = render_groups(groups, "markdown")
    assert "### Encoder: RN50/openai" in md and "### Encoder: ViT-B-16/openai" in md
    # a single Table over both encoders names the encoder in every head label: no cross-encoder Average
    t = aggregate(df, rows="dataset", cols="head", shots=[1])
    assert "zeroshot (model=RN50/openai)" in list(t.mean.columns)
    assert math.isnan(t.mean.loc[AVERAGE, "zeroshot (model=RN50/openai)"])  # RN50 lacks dtd: no Average
    path = write(tmp_path / "r.jsonl", rn + vit)
    res = CliRunner().invoke(app, ["table", str(path), "--model", "ViT-B-16", "--rows", "head"])
    assert res.exit_code == 0, res.output
    assert "Encoder: ViT-B-16/openai." in res.output and "RN50" not in res.output
    res = CliRunner().invoke(app, ["table", str(path), "--format", "csv"])
    assert res.output.startswith("encoder,head,dataset,") and "ViT-B-16/openai," in res.output
    res = CliRunner().invoke(app, ["table", str(path), "--model", "RN101"])
    assert res.exit_code == 2 and "--model RN101" in res.output and "RN50" in res.output


def test_single_encoder_is_named(rows):
    md = render(aggregate(pd.DataFrame(rows), rows="head"), "markdown")
    assert "Encoder: RN50/openai." in md


def test_conflicting_duplicates_are_an_error(tmp_path, rows):
    path = write(tmp_path / "r.jsonl", rows + [dict(rows[0], acc=99.0)])
    with pytest.raises(FeatbenchError, match=r"conflicting result rows for zeroshot on dtd, 1-shot, seed 1: "
                                             r".*r.jsonl:1 \(acc 50\), .*r.jsonl:25 \(acc 99\)"):
        aggregate(load_results([path]))
    # identical copies (the same file twice, a row written twice) count once
    t = aggregate(load_results([write(tmp_path / "same.jsonl", rows + [rows[0]])]), rows="head")
    assert t.mean.loc["zeroshot", 1] == pytest.approx((53 + 70) / 2)
    # same encoder name, other cache fingerprint: labelled apart, not merged or dropped
    other = [dict(r, fingerprint="other-fp", acc=r["acc"] - 5) for r in rows if r["head"] == "zeroshot"]
    t = aggregate(pd.DataFrame(rows + other), rows="head", cols="shots")
    assert {"zeroshot (fingerprint=f)", "zeroshot (fingerprint=other-fp)"} <= set(t.mean.index)
    # same fingerprint, other data (content id): labelled apart too
    same_fp = [dict(r, content="bbbbbbbbbb", acc=r["acc"] - 5) for r in rows if r["head"] == "zeroshot"]
    mine = [dict(r, content="aaaaaaaaaa") for r in rows]
    t = aggregate(pd.DataFrame(mine + same_fp), rows="head", cols="shots")
    assert {"zeroshot (content=aaaaaaaa)", "zeroshot (content=bbbbbbbb)"} <= set(t.mean.index)


@pytest.mark.parametrize("bad", ['"high"', "NaN", "Infinity", "null", "true", "[1]"])
def test_non_numeric_acc_names_the_line(tmp_path, rows, bad):
    text = "".join(json.dumps(r) + "\n" for r in rows[:3])
    text += json.dumps(dict(rows[3], acc="BAD")).replace('"BAD"', bad) + "\n"
    (tmp_path / "r.jsonl").write_text(text)
    with pytest.raises(FeatbenchError, match=r"r.jsonl:4: 'acc' must be a finite number"):
        load_results([tmp_path / "r.jsonl"])


def test_markdown_escapes_html_pipes_and_newlines(rows):
    evil = "<img src=x onerror=alert(1)>|a\nb&c"
    rows = [dict(r, dataset=evil, source_dataset=evil) if r["dataset"] == "dtd" else r for r in rows]
    md = render(aggregate(pd.DataFrame(rows), rows="dataset", cols="shots", heads=["zeroshot"]), "markdown")
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;\\|a b&amp;c" in md
    body = [ln for ln in md.splitlines() if ln.startswith("| &lt;img")]
    assert len(body) == 1 and body[0].count(" | ") == 2  # one row, the label stays one cell


def test_csv_neutralises_formulas_but_keeps_numbers(rows):
    rows = [dict(r, dataset="=HYPERLINK(\"x\")", source_dataset="=HYPERLINK(\"x\")") if r["dataset"] == "dtd" else r
            for r in rows]
    rows += [dict(r, head="-cmd", acc=r["acc"]) for r in rows if r["head"] == "zeroshot"]
    out = render(aggregate(pd.DataFrame(rows), rows="dataset", cols="shots"), "csv")
    import csv
    import io

    cells = [c for line in csv.reader(io.StringIO(out)) for c in line]
    assert "'=HYPERLINK(\"x\")" in cells and "'-cmd" in cells
    assert not any(c.startswith(("=", "+", "@")) for c in cells)
    assert not any(c.startswith("-") for c in cells)  # no negative numbers in accuracy tables either
    assert "53.0000" in cells


def test_decimals_bounds(tmp_path, rows):
    path = write(tmp_path / "r.jsonl", rows)
    for bad in ("-3", "11"):
        res = CliRunner().invoke(app, ["table", str(path), "--decimals", bad])
        assert res.exit_code == 2 and f"--decimals {bad}: give a whole number from 0 to 10" in res.output
    assert CliRunner().invoke(app, ["table", str(path), "--decimals", "0"]).exit_code == 0


def test_compare_per_class_deltas(tmp_path):
    from featbench.perclass import compare, render as render_cmp

    rows = []
    for seed in (1, 2):
        rows.append(row("dtd", "zeroshot", 4, seed, 53.33, per_class={"correct": [5, 0, 3], "total": [5, 5, 5]}))
        rows.append(row("dtd", "taskres", 4, seed, 73.33, per_class={"correct": [3, 5, 3], "total": [5, 5, 5]}))
    rows.append(row("dtd", "taskres", 4, 3, 1.0, per_class={"correct": [0, 0, 0], "total": [5, 5, 5]}))  # no pair
    (c,) = compare(pd.DataFrame(rows), "zeroshot", "taskres")
    assert c.seeds == [1, 2] and c.acc_a == [100.0, 0.0, 60.0] and c.acc_b == [60.0, 100.0, 60.0]
    assert c.deltas() == [(1, 100.0), (2, 0.0), (0, -40.0)]
    text = render_cmp([c], "zeroshot", "taskres", top=5)
    assert "1 classes better, 1 worse, 1 equal" in text
    gains, losses = text.split("largest gains:")[1].split("largest losses:")
    assert "class 1" in gains and "+100.00" in gains and "class 0" in losses and "-40.00" in losses
    path = write(tmp_path / "r.jsonl", rows)
    res = CliRunner().invoke(app, ["compare", str(path), "--heads", "zeroshot,taskres"])
    assert res.exit_code == 0 and "largest losses" in res.output, res.output
    old = write(tmp_path / "old.jsonl", [{k: v for k, v in r.items() if k != "per_class"} for r in rows])
    res = CliRunner().invoke(app, ["compare", str(old), "--heads", "zeroshot,taskres"])
    assert res.exit_code == 2 and "no per-class counts" in res.output
