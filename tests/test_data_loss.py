"""Nothing a user already has is lost: results files are append-only, outputs never replace inputs or foreign
files, custom datasets never share row identities, and concurrent identical sweeps never duplicate rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from featbench.cli import app
from featbench.errors import FeatbenchError
from featbench.results import ResultsWriter, read_rows, row_key
from featbench.runner import run_fit

from test_protocol import make_cache, test_heads  # noqa: F401  (fixture)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def results(tmp_path, test_heads):
    cache, _ = make_cache(tmp_path / "c.h5")
    out = tmp_path / "r.jsonl"
    rows = run_fit([cache], heads=["test-ncm"], shots=[1, 2], seeds=[1], out=out, progress=False)
    assert len(rows) == 2
    return cache, out


# -- table -o ----------------------------------------------------------------------------------------
def test_table_refuses_to_overwrite_its_input(results):
    _, out = results
    before = out.read_bytes()
    for flags in ([], ["--force"]):
        res = invoke("table", out, "-o", out, *flags)
        assert res.exit_code == 2 and "one of the input files" in res.stderr
        assert "Traceback" not in res.output
        assert out.read_bytes() == before


def test_table_refuses_input_inside_a_directory_and_foreign_files(results, tmp_path):
    _, out = results
    before = out.read_bytes()
    res = invoke("table", tmp_path, "-o", out)  # the directory's *.jsonl include out
    assert res.exit_code == 2 and "one of the input files" in res.stderr and out.read_bytes() == before
    other = tmp_path / "other.jsonl"
    other.write_bytes(before)  # a results file that is not an input
    res = invoke("table", out, "-o", other)
    assert res.exit_code == 2 and "not a featbench table" in res.stderr and other.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("my thesis notes\n")
    res = invoke("table", out, "-o", notes)
    assert res.exit_code == 2 and "--force" in res.stderr and notes.read_text() == "my thesis notes\n"
    res = invoke("table", out, "-o", notes, "--force")
    assert res.exit_code == 0 and notes.read_text().startswith("| ")


@pytest.mark.parametrize("fmt", ["markdown", "latex", "csv"])
def test_table_rewrites_its_own_output(results, tmp_path, fmt):
    _, out = results
    dest = tmp_path / f"t.{fmt}"
    assert invoke("table", out, "-f", fmt, "-o", dest).exit_code == 0
    first = dest.read_text()
    res = invoke("table", out, "-f", fmt, "-o", dest, "--decimals", "1")
    assert res.exit_code == 0, res.output
    assert dest.read_text() != first


# -- fit --out is append-only --------------------------------------------------------------------------
def test_fit_refuses_a_file_that_is_not_a_results_file(tmp_path, test_heads):
    cache, _ = make_cache(tmp_path / "c.h5")
    for content in ['{"lr": 0.1, "epochs": 3}', '{"lr": 0.1}\n', "name,acc\nx,1\n", "[1, 2, 3]\n"]:
        cfg = tmp_path / "config.json"
        cfg.write_text(content)
        res = invoke("fit", cache, "--heads", "test-ncm", "--shots", "1", "--seeds", "1", "--out", cfg, "--no-progress")
        assert res.exit_code == 2, res.output
        assert "not a featbench results file" in res.stderr and "Traceback" not in res.output
        assert cfg.read_text() == content


def test_fit_out_a_directory_is_one_line(tmp_path, test_heads):
    cache, _ = make_cache(tmp_path / "c.h5")
    res = invoke("fit", cache, "--heads", "test-ncm", "--shots", "1", "--seeds", "1", "--out", tmp_path, "--no-progress")
    assert res.exit_code == 2 and "is a directory" in res.stderr


def test_valid_last_row_without_newline_is_kept_and_counted(results, test_heads):
    cache, out = results
    data = out.read_bytes().rstrip(b"\n")  # the last (valid) row loses its newline
    out.write_bytes(data)
    added = run_fit([cache], heads=["test-ncm"], shots=[1, 2, 4], seeds=[1], out=out, progress=False)
    assert [r["shots"] for r in added] == [4]  # the 2-shot row without newline counted as done
    now = out.read_bytes()
    assert now.startswith(data + b"\n")  # existing bytes untouched, new rows on a fresh line
    assert [r["shots"] for r in read_rows(out)] == [1, 2, 4]


def test_partial_line_of_a_killed_run_is_kept_and_the_cell_rerun(results, test_heads):
    cache, out = results
    lines = out.read_bytes().splitlines(keepends=True)
    cut = lines[0] + lines[1][: len(lines[1]) // 2]
    out.write_bytes(cut)
    added = run_fit([cache], heads=["test-ncm"], shots=[1, 2], seeds=[1], out=out, progress=False)
    assert [r["shots"] for r in added] == [2]
    assert out.read_bytes().startswith(cut + b"\n")
    assert [r["shots"] for r in read_rows(out)] == [1, 2]


def test_corrupt_middle_line_is_an_error_naming_the_line(results):
    _, out = results
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "garbage\n" + lines[1])
    with pytest.raises(FeatbenchError, match="line 2"):
        read_rows(out)


# -- custom datasets -----------------------------------------------------------------------------------
def test_two_custom_caches_with_one_model_do_not_collide(tmp_path, test_heads):
    a, _ = make_cache(tmp_path / "a.h5", dataset="folder", seed=0)
    b, _ = make_cache(tmp_path / "b.h5", dataset="folder", seed=1)  # same fingerprint and name, other images
    out = tmp_path / "r.jsonl"
    rows = run_fit([a, b], heads=["test-ncm"], shots=[1], seeds=[1], out=out, progress=False)
    assert len(rows) == 2 and rows[0]["content"] != rows[1]["content"]
    assert len({row_key(r) for r in read_rows(out)}) == 2


def test_extract_custom_dataset_needs_a_name(tmp_path):
    from featbench.extract import dataset_name
    from featbench.synthetic import make_dataset

    root = make_dataset(tmp_path / "data", "folder", n_classes=2, per_split=(1, 1, 1))
    res = invoke("extract", "--dataset", "folder", "--root", root, "--model", "tiny-vit", "--pretrained", "none",
                 "--cache-dir", tmp_path / "cache", "--no-progress")
    assert res.exit_code == 2 and "--name" in res.stderr and "Traceback" not in res.output
    assert dataset_name("folder", "my-birds") == "my-birds"
    for bad in ("../x", "", "caltech101", "a" * 100):
        with pytest.raises(FeatbenchError, match="--name"):
            dataset_name("folder", bad)
    with pytest.raises(FeatbenchError, match="only applies to custom"):
        dataset_name("caltech101", "mine")
    assert dataset_name("caltech101", None) == "caltech101"


# -- concurrent writers --------------------------------------------------------------------------------
def test_writers_recheck_keys_under_the_lock(results):
    _, out = results
    rows = read_rows(out)
    late = ResultsWriter(out)  # read the file now ...
    other = ResultsWriter(out)
    extra = dict(rows[0], shots=99)
    assert other.append([extra]) == [extra]  # ... another process appends meanwhile ...
    assert late.append([extra, dict(rows[0], shots=98)]) == [dict(rows[0], shots=98)]  # ... and is not duplicated
    assert len(read_rows(out)) == 4


def test_two_identical_fit_processes_write_each_row_once(tmp_path):
    cache, _ = make_cache(tmp_path / "c.h5", n_classes=4)
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "featbench", "fit", str(cache), "--heads", "zeroshot,gda", "--shots", "1,2",
           "--seeds", "1,2,3", "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3
    assert len({row_key(r) for r in rows}) == len(rows)


def test_table_reads_a_file_with_a_cut_line_in_the_middle(results, test_heads):
    cache, out = results
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1][:40])
    run_fit([cache], heads=["test-ncm"], shots=[1, 2], seeds=[1], out=out, progress=False)
    res = invoke("table", out)
    assert res.exit_code == 0, res.output
    assert "test-ncm" in res.stdout or "caltech101" in res.stdout
