"""The published-numbers ledger: the shipped file, its reader, `featbench published` and `table --published`."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest
from typer.testing import CliRunner

from featbench import published
from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.tables import aggregate, render

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ELEVEN = published.AVERAGED
HEADER = ",".join(published.COLUMNS)


def row(dataset, head, shots, seed, acc, *, model="RN50", protocol="paper", **kw):
    return dict(dataset=dataset, source_dataset=kw.pop("source", dataset), model=model, pretrained="openai",
                fingerprint="f", cache=f"cache/{dataset}.h5", head=head, params={}, selected={}, protocol=protocol,
                shots=shots, seed=seed, acc=acc, n_test=100, fit_seconds=0.1, views_used=0, notes=[],
                featbench_version="0.1.0", timestamp="2026-01-01T00:00:00Z", **kw)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ledger_line(**over) -> str:
    vals = dict(head="taskres", model="RN50", pretrained="openai", dataset="dtd", shots="16", protocol="few-shot",
                split="all", value="67.57", aggregation="3 seeds", source="X, arXiv:0000.00000", where="Table 1",
                note="")
    vals.update(over)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([vals[c] for c in published.COLUMNS])
    return buf.getvalue()


# -- the shipped ledger ---------------------------------------------------------------------------------------
def test_shipped_ledger_is_valid_and_sourced():
    from featbench.datasets import list_datasets
    from featbench.heads import list_heads

    rows = published.read_ledger()
    assert len(rows) == len({r.key for r in rows}) >= 243
    heads, datasets = set(list_heads()), set(list_datasets()) | {published.AVERAGE}
    for r in rows:
        assert r.source.strip() and r.where.strip(), r
        assert "arXiv:" in r.source, r
        assert 0 < r.value < 100, r
        assert r.head in heads and r.dataset in datasets, r
        assert r.pretrained == "openai" and r.model in {"RN50", "ViT-B-16"}, r
    counts = Counter((r.head, r.model, r.protocol) for r in rows)
    for head in ("tip-adapter", "tip-adapter-f", "clip-adapter", "gda"):
        assert counts[(head, "RN50", "few-shot")] == 55  # 11 datasets x 1/2/4/8/16 shots
    assert counts[("zeroshot", "RN50", "few-shot")] == 11
    for head in ("zeroshot", "coop", "cocoop", "kgcoop"):
        assert counts[(head, "ViT-B-16", "base-to-new")] == 3
    for head in ("coop", "ape", "ape-t"):  # APE's notebook: 11 datasets x 1/2/4/8/16 shots
        assert counts[(head, "RN50", "few-shot")] == 55
    assert counts[("gda", "ViT-B-16", "base-to-new")] == 22  # 11 datasets x Base / New
    assert counts[("gda", "ViT-B-16", "few-shot")] == 11  # GDA's architecture log: 16 shots
    dg = [r for r in rows if r.protocol == "domain-generalisation"]
    assert len(dg) == 12 and all(r.shots == 16 and r.split == "all" for r in dg)
    assert {r.dataset for r in dg} == {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


def test_shipped_ledger_spot_values():
    """A few numbers checked by hand against the sources (Tip-Adapter's and GDA's exp.log, CoCoOp Table 1)."""
    idx = published.Index(published.read_ledger())
    find = lambda head, ds, k, **kw: idx.find(head=head, model=kw.pop("model", "RN50"), pretrained="openai",  # noqa: E731
                                               dataset=ds, shots=k, protocol=kw.pop("protocol", "few-shot"), **kw)
    assert find("tip-adapter-f", "imagenet", 16).value == 65.51
    assert find("tip-adapter", "fgvc_aircraft", 1).value == 19.05
    assert find("clip-adapter", "eurosat", 2).value == 63.90
    assert find("gda", "oxford_flowers", 16).value == 95.72
    assert find("zeroshot", "ucf101", 8).value == 61.35  # a zero-shot number stands for every shot count
    assert find("cocoop", "average", 16, model="ViT-B-16", protocol="base-to-new", split="H").value == 75.83
    assert find("taskres", "imagenet", 16) is None
    assert find("coop", "fgvc_aircraft", 1).value == 8.87  # APE's notebook
    assert find("ape-t", "ucf101", 16).value == 79.73
    assert find("ape", "imagenet", 16, model="ViT-B-16").value == 72.17
    assert find("gda", "dtd", 16, model="ViT-B-16", protocol="base-to-new", split="new").value == 59.8229
    assert find("gda", "imagenet_r", 16, model="ViT-B-16", protocol="domain-generalisation").value == 76.9733
    assert find("gda", "imagenet", 16, model="ViT-B-16").value == 72.2427  # architecture.log, not the DG run's
    assert find("coop", "imagenet_a", 16, protocol="domain-generalisation").value == 23.06  # ProLIP Table 9
    assert find("prolip", "imagenet_sketch", 16, protocol="domain-generalisation").value == 34.80


def test_ledger_ships_as_package_data():
    """pyproject's package data takes the CSV, so a wheel or an editable install finds it next to the module."""
    import tomllib
    from importlib.resources import files
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert "**/*.csv" in project["tool"]["setuptools"]["package-data"]["featbench"]
    assert (files("featbench") / "published_data" / "ledger.csv").is_file()
    assert "published" in " ".join(project["tool"]["importlinter"]["contracts"][0]["layers"])


# -- the reader ----------------------------------------------------------------------------------------------
def test_reader_errors_name_the_line_and_the_fix(tmp_path):
    good = HEADER + "\n" + ledger_line()
    assert published.parse_ledger(good)[0].value == 67.57
    cases = [
        (good + ledger_line(note="again"), "ledger.csv:3: the same number as line 2"),
        (HEADER.replace(",where", "") + "\n", "lacks the column"),
        (HEADER + "\n" + ledger_line(shots="3"), "shots '3' is not one of"),
        (HEADER + "\n" + ledger_line(shots="x"), "not a whole number"),
        (HEADER + "\n" + ledger_line(value="101"), "outside 0-100"),
        (HEADER + "\n" + ledger_line(value="nan"), "not a number"),
        (HEADER + "\n" + ledger_line(protocol="zero-shot"), "protocol 'zero-shot'"),
        (HEADER + "\n" + ledger_line(split="base"), "does not fit protocol few-shot"),
        (HEADER + "\n" + ledger_line(source=""), "'source' field is empty"),
        (HEADER + "\n" + ledger_line(where=" "), "'where' field is empty"),
        (HEADER + "\n" + "a,b\n", "fewer fields"),
        (HEADER + "\n" + ledger_line(note="NOTE").replace("NOTE", '"two\rlines"'), "'note' field holds a line break"),
    ]
    for text, message in cases:
        with pytest.raises(FeatbenchError, match=message):
            published.parse_ledger(text)
    with pytest.raises(FeatbenchError, match="cannot read"):
        published.read_ledger(tmp_path / "nope.csv")


def test_select_and_index():
    rows = published.parse_ledger(HEADER + "\n" + ledger_line() + ledger_line(head="zeroshot", shots="0")
                                  + ledger_line(shots="1", value="50"))
    assert [r.shots for r in published.select(rows, shots=[1])] == [0, 1]
    assert [r.head for r in published.select(rows, head="zeroshot")] == ["zeroshot"]
    assert published.select(rows, model="ViT-B-16") == []
    with pytest.raises(FeatbenchError, match="--protocol"):
        published.select(rows, protocol="fewshot")
    idx = published.Index(rows)
    assert idx.find(head="zeroshot", model="RN50", pretrained="openai", dataset="dtd", shots=4,
                    protocol="few-shot").shots == 0
    assert idx.find(head="taskres", model="RN50", pretrained="openai", dataset="dtd", shots=4, protocol="few-shot") is None


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=20)
_rows = st.fixed_dictionaries(dict(
    head=st.sampled_from(["taskres", "gda", "coop"]), model=st.sampled_from(["RN50", "ViT-B-16"]),
    dataset=st.sampled_from(list(ELEVEN) + ["average"]), shots=st.sampled_from(published.SHOTS),
    proto_split=st.sampled_from([("few-shot", "all"), ("base-to-new", "base"), ("base-to-new", "H"),
                                 ("domain-generalisation", "all")]),
    value=st.floats(0, 100, allow_nan=False), note=_text))


@settings(max_examples=60, deadline=None)
@given(st.lists(_rows, max_size=8))
def test_valid_ledgers_round_trip(drawn):
    """Any valid ledger reads back the same after the CSV the CLI writes (duplicates: an error, never dropped)."""
    lines = [ledger_line(head=d["head"], model=d["model"], dataset=d["dataset"], shots=str(d["shots"]),
                         protocol=d["proto_split"][0], split=d["proto_split"][1], value=repr(d["value"]),
                         note=d["note"]) for d in drawn]
    keys = [(d["head"], d["model"], d["dataset"], d["shots"], d["proto_split"]) for d in drawn]
    text = HEADER + "\n" + "".join(lines)
    if len(set(keys)) < len(keys):
        with pytest.raises(FeatbenchError, match="the same number"):
            published.parse_ledger(text)
        return
    rows = published.parse_ledger(text)
    assert [r.value for r in rows] == [d["value"] for d in drawn]
    again = published.parse_ledger(published.format_rows(rows, "csv"))
    assert [(r.key, round(r.value, 2), r.note) for r in again] == [(r.key, round(r.value, 2), r.note) for r in rows]


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=300))
def test_any_text_reads_or_fails_with_one_line(text):
    """Whatever the file holds, the reader returns rows or raises FeatbenchError (never another exception)."""
    try:
        rows = published.parse_ledger(HEADER + "\n" + text)
    except FeatbenchError as err:
        assert "\n" not in str(err)
    else:
        assert all(0 <= r.value <= 100 and r.shots in published.SHOTS for r in rows)


# -- featbench published ---------------------------------------------------------------------------------------
def test_cli_published_lists_rows_with_sources():
    runner = CliRunner()
    res = runner.invoke(app, ["published", "--head", "tip-adapter-f", "--dataset", "imagenet", "--shots", "1,16"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("| tip-adapter-f")]
    assert len(lines) == 2 and "| 61.13 |" in lines[0] and "| 65.51 |" in lines[1]
    assert "Tip-Adapter, arXiv:2111.03930" in lines[1] and "exp.log" in lines[1]
    res = runner.invoke(app, ["published", "--protocol", "base-to-new", "--model", "ViT-B-16", "--format", "csv"])
    assert res.exit_code == 0, res.output
    got = list(csv.DictReader(io.StringIO(res.output)))
    averages = [r for r in got if r["dataset"] == "average"]  # CoCoOp / KgCoOp: Base, New, H of four heads
    assert len(averages) == 12 and {r["split"] for r in averages} == {"base", "new", "H"}
    assert len(got) == 12 + 22  # plus GDA's per-dataset Base and New (its log prints no H)
    assert all(r["source"] and r["where"] for r in got)
    res = runner.invoke(app, ["published", "--head", "tipadapter-f"])
    assert res.exit_code == 2 and "did you mean 'tip-adapter-f'" in res.output
    res = runner.invoke(app, ["published", "--protocol", "fewshot"])
    assert res.exit_code == 2 and "--protocol" in res.output
    res = runner.invoke(app, ["published", "--head", "clip-adapter", "--model", "ViT-B-16"])
    assert res.exit_code == 2 and "no published numbers match" in res.output
    res = runner.invoke(app, ["published", "--format", "latex"])
    assert res.exit_code == 2 and "--format" in res.output
    for shots in ("one", "-1", "nan"):
        res = runner.invoke(app, ["published", "--shots", shots])
        assert res.exit_code == 2 and "--shots" in res.output and "Traceback" not in res.output, res.output


def test_published_and_table_published_do_not_import_torch(tmp_path):
    path = write(tmp_path / "r.jsonl", [row("imagenet", "tip-adapter-f", 16, s, 65.0) for s in (1, 2, 3)])
    code = ("import sys; from featbench.cli import app\n"
            "for argv in (['published'], ['table', %r, '--published']):\n"
            "    try:\n        app(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')") % str(path)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# -- featbench table --published -------------------------------------------------------------------------------
@pytest.fixture
def rn50_rows():
    out = []
    for seed, acc in zip((1, 2, 3), (64.0, 65.0, 66.0)):
        out.append(row("imagenet", "tip-adapter-f", 16, seed, acc))
        out.append(row("imagenet", "tip-adapter-f", 1, seed, acc - 3))
        out.append(row("imagenet", "taskres", 16, seed, 70.0))  # no published number in the ledger
        out.append(row("imagenet", "zeroshot", 16, seed, 60.0))
    return out


def test_table_published_markdown_value_and_delta(tmp_path, rn50_rows):
    path = write(tmp_path / "r.jsonl", rn50_rows)
    res = CliRunner().invoke(app, ["table", str(path), "--published", "--names", "registry"])
    assert res.exit_code == 0, res.output
    lines = {ln.split("|")[1].strip(): ln for ln in res.output.splitlines() if "| imagenet |" in ln}
    assert "65.00 ± 0.82 [pub 65.51, Δ -0.51]" in lines["tip-adapter-f"]  # Tip-Adapter's exp.log: 65.51
    assert "**62.00** ± 0.82 [pub 61.13, Δ +0.87]" in lines["tip-adapter-f"]  # the only 1-shot cell: bold
    assert "60.00 ± 0.00 [pub 60.32, Δ -0.32]" in lines["zeroshot"]  # zero-shot: one number for every shot count
    assert "pub" not in lines["taskres"]  # no published number: nothing extra
    assert "Sources: Tip-Adapter, arXiv:2111.03930, exp.log of gaopengcuhk/Tip-Adapter@30d2598" in res.output
    plain = CliRunner().invoke(app, ["table", str(path)])
    assert plain.exit_code == 0 and "pub" not in plain.output and "Published" not in plain.output


def test_table_published_csv_columns(rn50_rows):
    t = aggregate(pd.DataFrame(rn50_rows), rows="dataset", cols="shots", published=True)
    got = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    tip = next(r for r in got if r["head"] == "tip-adapter-f" and r["dataset"] == "imagenet")
    assert (tip["16-shot published"], tip["16-shot delta"]) == ("65.5100", "-0.5100")
    assert tip["16-shot published source"] == "Tip-Adapter, arXiv:2111.03930"
    tr = next(r for r in got if r["head"] == "taskres" and r["dataset"] == "imagenet")
    assert tr["16-shot published"] == tr["16-shot delta"] == tr["16-shot published source"] == ""
    assert "16-shot published" not in render(aggregate(pd.DataFrame(rn50_rows)), "csv")


def test_table_published_matches_encoder_dataset_and_setting(rn50_rows):
    vit = [dict(r, model="ViT-B-16") for r in rn50_rows]
    assert aggregate(pd.DataFrame(vit), published=True).published.isna().all().all()
    over = [dict(r, overrides={"alpha": 2.0}) for r in rn50_rows]  # a user-set parameter: not the paper's setting
    assert aggregate(pd.DataFrame(over), published=True).published.isna().all().all()
    dg = [row("imagenet_a", "tip-adapter-f", 16, s, 40.0, source="imagenet") for s in (1, 2, 3)]
    t = aggregate(pd.DataFrame(dg), published=True)
    assert t.published.isna().all().all()  # a domain-generalisation cell is not a few-shot number
    assert any("none in the ledger matches" in n for n in t.notes)


def test_table_published_matches_domain_generalisation_rows():
    """An eval-on row (trained on ImageNet, evaluated on a shifted set) meets the ledger's domain-generalisation
    number for that target; the same target evaluated as its own training set does not."""
    dg = [row(ds, "coop", 16, s, 30.0, source="imagenet") for ds in ("imagenet_a", "imagenet_r") for s in (1, 2, 3)]
    t = aggregate(pd.DataFrame(dg), rows="dataset", cols="shots", published=True)
    assert t.published.loc["imagenet_a", 16] == 23.06 and t.published.loc["imagenet_r", 16] == 56.60
    assert t.published_source.loc["imagenet_a", 16] == "ProLIP, arXiv:2410.05270"
    assert any("Table 9" in n for n in t.notes)
    own = [row("imagenet_a", "coop", 16, s, 30.0) for s in (1, 2, 3)]  # no ImageNet source: not DG
    assert aggregate(pd.DataFrame(own), published=True).published.isna().all().all()


def test_published_average_only_over_the_eleven_datasets():
    """The Base / New / H Average matches CoCoOp's published average only when the table has its 11 datasets."""
    from featbench.b2n_table import aggregate_base_to_new

    rows = [row(ds, "cocoop", 16, s, acc, model="ViT-B-16", classes=half)
            for ds in ELEVEN for s in (1, 2, 3) for half, acc in (("base", 80.0), ("new", 70.0))]
    t = aggregate_base_to_new(pd.DataFrame(rows), published=True)
    avg = t.published.xs("Average", level="dataset").iloc[0]
    assert list(avg) == [80.47, 71.69, 75.83]
    md = render(t, "markdown")
    assert "80.00 ± 0.00 [pub 80.47, Δ -0.47]" in md and "74.67 [pub 75.83, Δ -1.16]" in md
    few = [r for r in rows if r["dataset"] in ("dtd", "eurosat")]
    assert aggregate_base_to_new(pd.DataFrame(few), published=True).published.isna().all().all()


def test_table_published_latex_compiles(tmp_path, rn50_rows):
    if shutil.which("pdflatex") is None:
        if os.environ.get("FEATBENCH_REQUIRE_LATEX"):
            pytest.fail("pdflatex not found but FEATBENCH_REQUIRE_LATEX is set")
        pytest.skip("pdflatex not installed")
    tex = render(aggregate(pd.DataFrame(rn50_rows), rows="dataset", cols="shots", published=True), "latex",
                 standalone=True)
    assert r"{\scriptsize[pub 65.51, $\Delta\,-0.51$]}" in tex and r"$\Delta$ D" in tex
    (tmp_path / "t.tex").write_text(tex, encoding="utf-8")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
