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


def test_one_panel_legend_fits_the_figure():
    rows = [dict(r, head=h) for r in _rows() if r["dataset"] == "dtd"
            for h in ("zeroshot", "linear-probe", "tip-adapter", "tip-adapter-f", "taskres (alpha=0.5)")]
    from featbench.plots import make_figure

    fig = make_figure(pd.DataFrame(rows))
    fig.canvas.draw()
    fig_box = fig.bbox
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1, (box, fig_box)


def test_titles_and_labels_are_not_mathtext(tmp_path):
    rows = [dict(r, dataset="cost$^$", source_dataset="cost$^$", head="h$\\frac$") for r in _rows()]
    files = plot_curves(pd.DataFrame(rows), tmp_path / "f.png", title="$x^$ 100$")  # invalid mathtext: must not raise
    assert files[0].stat().st_size > 1000
    from featbench.plots import make_figure

    fig = make_figure(pd.DataFrame(rows), title="$a$")
    fig.canvas.draw()
    assert "$a$" in fig.get_suptitle().replace("\\$", "$")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert any(t.replace("\\$", "$") == "cost$^$" for t in titles)


def test_plot_out_existing_file_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    res = CliRunner().invoke(app, ["plot", str(path), "--out", str(path)])
    assert res.exit_code == 2 and "is an existing file, not a folder" in res.output
    assert "Traceback" not in res.output and path.read_text().startswith("{")
    (tmp_path / "fig.png").mkdir()
    res = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "fig.png")])
    assert res.exit_code == 2 and "is not a file" in res.output
    res = CliRunner().invoke(app, ["plot", str(path), "--out", str(path / "sub")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output
    # re-plotting over a previous plot's files is fine
    for _ in range(2):
        assert CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "g.pdf")]).exit_code == 0


def test_figure_notes_are_wrapped_to_the_figure_width():
    """A one-panel figure is narrow: its note is re-wrapped to fit, never cut at the edges; no word is lost."""
    from featbench.plots import fit_width

    note = "points: mean over seeds, bars: ± population std; 0: training-free heads, drawn at the axis floor\nsecond"
    wrapped = fit_width(note, 4.0, 8)
    assert all(len(line) <= int(4.0 * 72 / (0.55 * 8)) for line in wrapped.splitlines())
    assert wrapped.split() == note.split() and len(wrapped.splitlines()) > 2
    assert fit_width("short", 4.0, 8) == "short"
