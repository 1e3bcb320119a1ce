"""`featbench compare` prints a significance verdict first, `featbench table --ci` 95% t intervals: CLI runs on
hand-made result rows, numbers checked against scipy and the textbook formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from typer.testing import CliRunner

from featbench.cli import app


def row(dataset, head, shots, seed, acc, **kw):
    return dict(dataset=dataset, source_dataset=dataset, model="RN50", pretrained="openai", fingerprint="f",
                cache=f"cache/{dataset}.h5", head=head, params={}, selected={}, protocol="paper", shots=shots,
                seed=seed, acc=acc, mean_per_class_recall=acc, n_test=100, fit_seconds=0.1, views_used=0, notes=[],
                featbench_version="0.1.0", timestamp="2026-01-01T00:00:00Z", **kw)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def counts(hits, labels, n_classes):
    return {"correct": np.bincount(labels[hits], minlength=n_classes).tolist(),
            "total": np.bincount(labels, minlength=n_classes).tolist()}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


SEEDS_A = {("dtd", 1): [50.0, 52.0, 57.0], ("eurosat", 1): [70.0, 71.0, 69.0]}
SEEDS_B = {("dtd", 1): [51.5, 55.0, 57.5], ("eurosat", 1): [72.0, 71.5, 70.0]}
PC = {"correct": [1, 1], "total": [2, 2]}


@pytest.fixture
def seeded(tmp_path):
    rows = [row(ds, head, k, seed, acc, per_class=PC)
            for head, table in (("zeroshot", SEEDS_A), ("taskres", SEEDS_B))
            for (ds, k), accs in table.items() for seed, acc in zip((1, 2, 3), accs)]
    return write(tmp_path / "r.jsonl", rows)


def test_compare_prints_a_paired_t_per_cell_and_overall(seeded):
    res = invoke("compare", seeded, "--heads", "zeroshot,taskres")
    assert res.exit_code == 0, res.output
    text = res.output
    assert text.index("Statistics: B - A = taskres - zeroshot") < text.index("mean per-class accuracy")  # verdict first
    for ds in ("dtd", "eurosat"):
        a, b = SEEDS_A[(ds, 1)], SEEDS_B[(ds, 1)]
        ref = sps.ttest_rel(b, a)
        ci = ref.confidence_interval()
        line = next(ln for ln in text.splitlines() if ln.startswith(f"  {ds}, 1-shot, seeds 1,2,3:"))
        mean = float(np.mean(np.subtract(b, a)))
        assert f"{mean:+.2f} [95% CI {ci.low:+.2f}, {ci.high:+.2f}], p = {ref.pvalue:.3g}" in line, line
        assert "(paired t over 3 seeds, df = 2)" in line
    d = [y - x for k in SEEDS_A for x, y in zip(SEEDS_A[k], SEEDS_B[k])]
    ref = sps.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval()
    overall = next(ln for ln in text.splitlines() if ln.startswith("  overall"))
    expected = f"{np.mean(d):+.2f} [95% CI {ci.low:+.2f}, {ci.high:+.2f}]"
    assert f"6 differences over 2 dataset x shots cells: {expected}" in overall
    assert "df = 5" in overall and "nan" not in text.lower()
    assert invoke("compare", seeded, "--heads", "zeroshot,taskres").output == text  # deterministic


def test_compare_filters_restrict_the_cells(seeded):
    res = invoke("compare", seeded, "--heads", "zeroshot,taskres", "--datasets", "eurosat")
    assert res.exit_code == 0, res.output
    assert "eurosat, 1-shot" in res.output and "dtd, 1-shot" not in res.output and "overall" not in res.output


def test_no_matched_cells_is_one_line_naming_what_differs(tmp_path):
    rows = [row("dtd", "zeroshot", k, 1, 50.0, per_class=PC) for k in (1, 2)]
    rows.append(row("dtd", "taskres", 4, 1, 55.0, per_class=PC))
    res = invoke("compare", write(tmp_path / "r.jsonl", rows), "--heads", "zeroshot,taskres")
    assert res.exit_code == 2
    assert "no matched cells" in res.output and "zeroshot has shots 1,2; taskres has 4" in res.output
    assert len(res.output.strip().splitlines()) == 1
    rows = [row("dtd", "zeroshot", 1, s, 50.0, per_class=PC) for s in (1, 2)]
    rows += [row("dtd", "taskres", 1, 3, 50.0, per_class=PC)]
    res = invoke("compare", write(tmp_path / "s.jsonl", rows), "--heads", "zeroshot,taskres")
    assert res.exit_code == 2 and "zeroshot has seeds 1,2; taskres has 3" in res.output


def _one_seed_rows(tmp_path, with_predictions):
    """One seed of two heads on 600 images of 3 classes, B right more often, A and B strongly correlated."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 200)
    a = rng.random(600) < 0.6
    b = a.copy()
    flip = rng.random(600)
    b[~a & (flip < 0.15)] = True
    b[a & (flip < 0.03)] = False
    preds = tmp_path / "preds"
    preds.mkdir()
    rows = []
    for head, hits in (("zeroshot", a), ("taskres", b)):
        r = row("dtd", head, 1, 1, 100.0 * hits.mean(), per_class=counts(hits, labels, 3))
        if with_predictions:
            np.savez(preds / f"{head}.npz", pred=np.where(hits, labels, (labels + 1) % 3), label=labels)
            r["predictions"] = f"{head}.npz"
        rows.append(r)
    return write(tmp_path / "r.jsonl", rows), preds, a, b


def test_one_seed_without_predictions_bootstraps_counts_and_says_so(tmp_path):
    path, _, a, b = _one_seed_rows(tmp_path, with_predictions=False)
    res = invoke("compare", path, "--heads", "zeroshot,taskres")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("  dtd, 1-shot, seed 1:"))
    assert f"{100 * (b.mean() - a.mean()):+.2f} [95% CI" in line
    assert "from per-class counts, 10000 resamples, A and B resampled independently*" in line
    assert "* the per-class counts do not say which images both heads got right" in res.output
    assert "`fit --save-predictions DIR`" in res.output


def test_one_seed_with_predictions_is_the_exact_paired_bootstrap_and_mcnemar(tmp_path):
    from featbench import stats

    path, preds, a, b = _one_seed_rows(tmp_path, with_predictions=True)
    hint = invoke("compare", path, "--heads", "zeroshot,taskres")
    assert hint.exit_code == 0 and "pass --predictions DIR (the rows name saved predictions)" in hint.output
    res = invoke("compare", path, "--heads", "zeroshot,taskres", "--predictions", preds, "--bootstrap", 2000)
    assert res.exit_code == 0, res.output
    est = stats.paired_bootstrap(a, b, resamples=2000)
    n01, n10, p = stats.mcnemar_exact(a, b)
    line = next(ln for ln in res.output.splitlines() if ln.startswith("  dtd, 1-shot, seed 1:"))
    assert f"{est.diff:+.2f} [95% CI {est.low:+.2f}, {est.high:+.2f}], {stats.format_p(est.p)}" in line
    assert "paired bootstrap over 600 test images from saved predictions, 2000 resamples" in line
    assert f"McNemar exact {stats.format_p(p)}: {n01} images only B got right, {n10} only A" in line
    assert "*" not in res.output.split("\n\n")[0]
    unpaired = stats.unpaired_bootstrap(counts(a, np.repeat(np.arange(3), 200), 3)["correct"],
                                        counts(b, np.repeat(np.arange(3), 200), 3)["correct"], [200] * 3)
    assert est.high - est.low < unpaired.high - unpaired.low  # the pairing narrows the interval


def test_predictions_that_do_not_belong_to_the_row_are_refused(tmp_path):
    path, preds, a, _ = _one_seed_rows(tmp_path, with_predictions=True)
    np.savez(preds / "taskres.npz", pred=np.zeros(600, dtype=np.int32), label=np.repeat(np.arange(3), 200))
    res = invoke("compare", path, "--heads", "zeroshot,taskres", "--predictions", preds)
    assert res.exit_code == 2 and "taskres.npz: its predictions do not give the acc of" in res.output
    (preds / "taskres.npz").unlink()
    res = invoke("compare", path, "--heads", "zeroshot,taskres", "--predictions", preds)
    assert res.exit_code == 2 and "no taskres.npz" in res.output and "fit --save-predictions" in res.output
    res = invoke("compare", path, "--heads", "zeroshot,taskres", "--predictions", tmp_path / "nope")
    assert res.exit_code == 2 and "not a folder" in res.output


def test_bootstrap_flag_is_checked(seeded):
    res = invoke("compare", seeded, "--heads", "zeroshot,taskres", "--bootstrap", 5)
    assert res.exit_code == 2 and "--bootstrap 5: give a whole number of resamples from 100 to 1000000" in res.output
    for bad in ("-100", "nan", "ten"):
        res = invoke("compare", seeded, "--heads", "zeroshot,taskres", "--bootstrap", bad)
        assert res.exit_code == 2 and "--bootstrap" in res.output and "Traceback" not in res.output, res.output


# -- table --ci ------------------------------------------------------------------------------------------------
def _half(values):
    return sps.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))


def test_table_ci_shows_t_half_widths(seeded):
    res = invoke("table", seeded, "--ci", "--names", "registry")
    assert res.exit_code == 0, res.output
    for ds in ("dtd", "eurosat"):
        vals = SEEDS_B[(ds, 1)]
        assert f"{np.mean(vals):.2f}** ± {_half(vals):.2f}" in res.output  # B is the best head: bold
    avg = np.mean([SEEDS_A[("dtd", 1)], SEEDS_A[("eurosat", 1)]], axis=0)  # per-seed averages
    assert f"{avg.mean():.2f} ± {_half(avg):.2f}" in res.output
    assert "mean ± 95% CI half-width (t, n-1 df) over 3 seeds" in res.output
    plain = invoke("table", seeded, "--names", "registry").output
    assert f"± {np.std(SEEDS_B[('dtd', 1)]):.2f}" in plain and "population std" in plain


def test_table_ci_in_csv_latex_ranked_and_one_seed(tmp_path, seeded):
    csv = invoke("table", seeded, "--ci", "--format", "csv").output.splitlines()
    assert "1-shot ci95" in csv[0] and "1-shot std" not in csv[0]
    dtd = next(ln for ln in csv if ln.startswith("Zero-shot CLIP,dtd,"))
    assert f"{_half(SEEDS_A[('dtd', 1)]):.4f}" in dtd
    latex = invoke("table", seeded, "--ci", "--format", "latex").output
    assert rf"$\pm$ {_half(SEEDS_A[('dtd', 1)]):.2f}" in latex and "95\\% CI half-width" in latex
    ranked = invoke("table", seeded, "--ci", "--rows", "head")
    assert ranked.exit_code == 0 and "rank" in ranked.output
    avg = np.mean([SEEDS_B[("dtd", 1)], SEEDS_B[("eurosat", 1)]], axis=0)
    assert f"{avg.mean():.2f}** ± {_half(avg):.2f}" in ranked.output
    one = write(tmp_path / "one.jsonl", [row("dtd", "zeroshot", 1, 1, 50.0), row("dtd", "zeroshot", 2, 1, 60.0)])
    res = invoke("table", one, "--ci")
    assert res.exit_code == 0 and "| 50.00 | 60.00 |" in res.output and "±" not in res.output.split("\n\n")[0]
    assert "A cell of one seed shows its mean alone" in res.output and "nan" not in res.output.lower()


def test_table_ci_base_to_new(tmp_path):
    accs = ((80, 60), (82, 61), (81, 65))
    rows = [row("dtd", "coop", 16, s, acc, classes=c) for s, (base, new) in zip((1, 2, 3), accs)
            for c, acc in (("base", float(base)), ("new", float(new)))]
    res = invoke("table", write(tmp_path / "b2n.jsonl", rows), "--ci")
    assert res.exit_code == 0, res.output
    assert f"81.00 ± {_half([80, 82, 81]):.2f}" in res.output and f"62.00 ± {_half([60, 61, 65]):.2f}" in res.output


# -- readers (hypothesis) --------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["correct", "total", "x"]), inner,
                                                                max_size=3),
    max_leaves=10)
count_lists = st.fixed_dictionaries({"correct": st.lists(st.integers(-2, 6), max_size=4),
                                     "total": st.lists(st.integers(-2, 6), max_size=4)})


def _clean_exit(res):
    """Exit 0 with no NaN, or the one-line error of a bad input: never a traceback."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 0:
        assert "nan" not in res.output.lower()
    else:
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("featbench: error:"), res.output


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pc_a=json_values | count_lists, pc_b=json_values | count_lists)
def test_compare_reads_any_per_class_value_without_a_traceback(tmp_path, pc_a, pc_b):
    rows = [row("dtd", "zeroshot", 1, 1, 50.0, per_class=pc_a), row("dtd", "taskres", 1, 1, 60.0, per_class=pc_b)]
    _clean_exit(invoke("compare", write(tmp_path / "r.jsonl", rows), "--heads", "zeroshot,taskres",
                       "--bootstrap", 200))


arrays = st.tuples(st.sampled_from(["int32", "int64", "uint8", "float32", "bool", "U1"]),
                   st.lists(st.integers(0, 3), min_size=0, max_size=2)).map(
    lambda t: np.zeros(t[1], dtype=t[0]) if t[0] != "int64" else np.arange(int(np.prod(t[1]))).reshape(t[1]) % 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.dictionaries(st.sampled_from(["pred", "label", "other"]), arrays, max_size=3),
       raw=st.none() | st.binary(max_size=64), acc=st.floats(0, 100))
def test_load_hits_reads_any_file_without_a_traceback(tmp_path, members, raw, acc):
    from featbench.errors import FeatbenchError
    from featbench.significance import load_hits

    path = tmp_path / "p.npz"
    if raw is None:
        np.savez(path, **members)
    else:
        path.write_bytes(raw)
    try:
        hits, labels = load_hits(tmp_path, {"predictions": "p.npz", "acc": acc, "_file": "r.jsonl", "_line": 1})
    except FeatbenchError as err:
        assert "\n" not in str(err)
    else:
        assert hits.shape == labels.shape and hits.dtype == bool and abs(100 * hits.mean() - acc) <= 1e-6
