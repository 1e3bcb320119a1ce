"""Plots: files produced (PNG + PDF), non-empty, for a directory or a stem; the CLI writes them too."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from featbench.cli import app
from featbench.plots import output_stem, plot_curves


def _rows():
    out = []
    for ds in ("dtd", "eurosat"):
        for head, bonus, proto in (("zeroshot", 0, "paper"), ("tip-adapter-f", 5, "oracle")):
            for shots in (1, 2, 4, 8, 16):
                for seed in (1, 2, 3):
                    out.append(dict(dataset=ds, source_dataset=ds, model="RN50", pretrained="openai", head=head,
                                    params={}, selected={}, protocol=proto, shots=shots, seed=seed,
                                    acc=40.0 + 3 * shots ** 0.5 + bonus + seed, mean_per_class_recall=40.0))
    return out


def test_plot_directory_and_stem(tmp_path):
    df = pd.DataFrame(_rows())
    files = plot_curves(df, tmp_path / "figs")
    assert [f.name for f in files] == ["accuracy-vs-shots.png", "accuracy-vs-shots.pdf"]
    for f in files:
        assert f.stat().st_size > 1000
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files[1].read_bytes()[:5] == b"%PDF-"
    files = plot_curves(df, tmp_path / "paper" / "fig3.pdf", metric="mean_per_class_recall", protocol="paper")
    assert sorted(f.name for f in files) == ["fig3.pdf", "fig3.png"]
    assert output_stem("x/fig.png").as_posix() == "x/fig"
    assert output_stem("x/figs").as_posix() == "x/figs/accuracy-vs-shots"


def test_plot_cli(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    res = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "accuracy-vs-shots.png").stat().st_size > 0
    assert (tmp_path / "out" / "accuracy-vs-shots.pdf").stat().st_size > 0
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not found" in res.output
