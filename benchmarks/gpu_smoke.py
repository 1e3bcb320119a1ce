"""featbench's one-call GPU smoke test (issue 20): everything a borrowed GPU should confirm, in one summary file.

Run it through `benchmarks/gpu_smoke.sh` (which installs the carried wheels first); see that file's header for
the device-tool call. Each check records what it measured and whether it passed; one failing check never stops
the others. The summary goes to ``<out>/gpu_smoke_summary.json`` (and a short text version to stdout).

Checks:
  env          torch, CUDA, the GPU's name, cores, open_clip's version
  extraction   CPU vs GPU extraction of tiny generated images: fingerprints differ (precision), features close,
               pre-projection features reproduce the features in float32
  determinism  two GPU fits of every head on that cache give identical rows
  cpu_vs_gpu   GPU rows against CPU rows: accuracy within a tolerance
  jobs2        `--jobs 2` on one GPU: capped at one worker (announced), rows equal to --jobs 1
  imagenet     an ImageNet-shaped (1000 classes, 16 shots, 10 views, D 1024) fit of the non-prompt heads,
               with seconds and peak GPU memory per head
  oom          a real CUDA out-of-memory inside a head's fit: one line naming the fix, exit code 2
  throughput   extraction images/s against the forward-only rate with 0 and 14 DataLoader workers

``--cpu-dry-run`` runs every check on the CPU at toy sizes: a test of this script, not of a GPU (fingerprints
then do not differ, and the out-of-memory error is raised by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
VOLATILE = ("fit_seconds", "timestamp", "cache", "predictions")
PROMPT_HEADS = ("coop", "kgcoop")
#: the heads a --cpu-dry-run fits (the script's paths, not every head, on a CPU)
DRY_HEADS = ("zeroshot", "tip-adapter-f", "taskres")
#: heads the synthetic ImageNet-shaped cache cannot serve (they read pre-projection features; the extraction
#: cache of the other checks has them)
PRE_PROJECTION_HEADS = ("prolip", "text-projection")


class Smoke:
    """Where the checks run (device, sizes, work folder) and what they found."""

    def __init__(self, out: Path, dry: bool, budget_s: float):
        self.out, self.dry, self.t0, self.budget_s = out, dry, time.perf_counter(), budget_s
        self.work = Path(tempfile.mkdtemp(prefix="featbench-smoke-"))
        self.device = "cpu" if dry else "cuda"
        self.results: dict[str, dict] = {}
        self.shared: dict = {}

    def heads(self, names) -> list[str]:
        """``names``, or on a dry run the few of them that exercise the script's paths."""
        return [h for h in names if h in DRY_HEADS] if self.dry else list(names)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def run(self, name: str, check) -> None:
        """Run one check, recording its result, its seconds and any error (never raising)."""
        t = time.perf_counter()
        if self.left_s() < 20:
            self.results[name] = {"ok": False, "skipped": f"time budget spent ({self.budget_s:.0f} s)"}
            return
        try:
            found = check(self) or {}
            found.setdefault("ok", True)
        except Exception as err:  # noqa: BLE001  (a smoke test reports every failure and goes on)
            found = {"ok": False, "error": f"{type(err).__name__}: {str(err).strip()[:500]}",
                     "where": traceback.format_exc(limit=-3)[-1500:]}
        found["seconds"] = round(time.perf_counter() - t, 2)
        self.results[name] = found
        print(f"[{name}] {'ok' if found['ok'] else 'FAILED'} in {found['seconds']} s", flush=True)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def quiet(_msg: str) -> None:
    pass


def fit_rows(smoke: Smoke, cache: Path, out: str, heads, device: str, **options) -> list[dict]:
    from featbench.runner import execute
    from featbench.fitspec import FitSpec

    announced = options.pop("announced", [])
    spec = FitSpec(caches=[cache], heads=list(heads), shots=options.pop("shots", (1, 2)),
                   seeds=options.pop("seeds", (1,)), out=smoke.work / out, device=device, progress=False,
                   **options)
    return execute(spec, announce=announced.append)


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def short_epochs(heads) -> dict:
    """A few epochs for every training head: the smoke test checks behaviour, not accuracy."""
    from featbench.heads import get_head_class

    sets = {}
    for h in heads:
        names = get_head_class(h).hyperparams
        if "epochs" in names:
            sets[f"{h}.epochs"] = 3
        if "warmup_epochs" in names:
            sets[f"{h}.warmup_epochs"] = 1
    return sets


def all_heads() -> list[str]:
    from featbench.heads import list_heads

    return [h for h in list_heads() if not h.startswith(("test-", "smoke-"))]


# ----------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------
def check_env(smoke: Smoke) -> dict:
    import torch

    found = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "dry_run": smoke.dry,
             "cores": len(os.sched_getaffinity(0))}
    try:
        import open_clip

        found["open_clip"] = open_clip.__version__
    except ImportError as err:
        found["open_clip"] = f"missing ({err}); carry the wheels (see gpu_smoke.sh)"
        found["ok"] = False
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    elif not smoke.dry:
        found["ok"] = False
        found["error"] = "no CUDA device: run with --cpu-dry-run on a machine without a GPU"
    return found


def check_extraction(smoke: Smoke) -> dict:
    import numpy as np

    from featbench.cache import Cache
    from featbench.extract import extract
    from featbench.synthetic import make_dataset

    root = make_dataset(smoke.work / "data", "caltech101", n_classes=8, per_split=(8, 4, 8), size=48)
    common = dict(model="tiny-vit", pretrained="none", views=2, view_shots=(1, 2), seeds=(1, 2), progress=False,
                  log=quiet, pre_projection=True, dtype="float32")
    paths = {}
    for name, device in (("cpu", "cpu"), ("gpu", smoke.device)):
        paths[name] = extract("caltech101", root, device=device, out=smoke.work / f"{name}.h5", **common)
    smoke.shared.update(cache=paths["gpu"], cpu_cache=paths["cpu"])
    with Cache(paths["cpu"]) as a, Cache(paths["gpu"]) as b:
        fa, fb = a.features("test"), b.features("test")
        cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
        pre = b.features("test", kind="features_pre")
        w = b.array("/model/image_projection")
        bias = b.array("/model/image_projection_bias") if b.has_dataset("/model/image_projection_bias") else 0.0
        found = {"fingerprint_cpu": a.fingerprint[:16], "fingerprint_gpu": b.fingerprint[:16],
                 "precision_gpu": b.preprocess.get("precision", "fp32"), "min_cosine_cpu_gpu": float(cos.min()),
                 "max_abs_diff_cpu_gpu": float(np.abs(fa - fb).max())}
    found["max_abs_pre_projection_error"] = float(np.abs(pre @ w + bias - fb).max())
    differ = found["fingerprint_cpu"] != found["fingerprint_gpu"]
    found["ok"] = ((differ != smoke.dry) and found["min_cosine_cpu_gpu"] > 0.999
                   and found["max_abs_pre_projection_error"] < 1e-4 * max(1.0, float(np.abs(fb).max())))
    return found


def check_determinism(smoke: Smoke) -> dict:
    heads = smoke.heads(all_heads())
    sets = short_epochs(heads)
    a = fit_rows(smoke, smoke.shared["cache"], "det_a.jsonl", heads, smoke.device, sets=sets)
    b = fit_rows(smoke, smoke.shared["cache"], "det_b.jsonl", heads, smoke.device, sets=sets)
    smoke.shared.update(gpu_rows=a, sets=sets, heads=heads)
    differing = sorted({ra["head"] for ra, rb in zip(a, b) if stable(ra) != stable(rb)})
    return {"rows": len(a), "heads": heads, "heads_with_differing_rows": differing,
            "fit_device": sorted({r.get("fit_device", "?") for r in a}),
            "deterministic_flags": sorted({str(r.get("deterministic", True)) for r in a}),
            "ok": len(a) == len(b) > 0 and not differing}


def check_cpu_vs_gpu(smoke: Smoke) -> dict:
    gpu = smoke.shared["gpu_rows"]
    cpu = fit_rows(smoke, smoke.shared["cache"], "cpu.jsonl", smoke.shared["heads"], "cpu", sets=smoke.shared["sets"])
    by_key = {(r["head"], r["shots"], r["seed"]): r for r in cpu}
    diffs: dict[str, float] = {}
    for r in gpu:
        other = by_key.get((r["head"], r["shots"], r["seed"]))
        if other is not None:
            diffs[r["head"]] = max(diffs.get(r["head"], 0.0), abs(float(r["acc"]) - float(other["acc"])))
    tolerance = 100.0 * 2 / max(1, gpu[0]["n_test"]) if gpu else 0.0  # two test images either way
    return {"max_acc_diff_points": diffs, "tolerance_points": round(tolerance, 3),
            "ok": bool(diffs) and max(diffs.values()) <= tolerance}


def check_jobs2(smoke: Smoke) -> dict:
    heads = smoke.heads(["zeroshot", "linear-probe", "tip-adapter", "taskres"])
    sets = short_epochs(heads)
    announced: list[str] = []
    one = fit_rows(smoke, smoke.shared["cache"], "jobs1.jsonl", heads, smoke.device, sets=sets, seeds=(1, 2))
    two = fit_rows(smoke, smoke.shared["cache"], "jobs2.jsonl", heads, smoke.device, sets=sets, seeds=(1, 2),
                   jobs=2, announced=announced)
    same = [stable(r) for r in one] == [stable(r) for r in two]
    capped = any("one per GPU" in m for m in announced)
    return {"rows": len(two), "rows_equal_jobs1": same, "announced": announced[-2:],
            "ok": same and len(two) > 0 and (capped or smoke.dry)}


def imagenet_cache(smoke: Smoke) -> tuple[Path, dict]:
    import numpy as np

    from featbench.cache import base_attrs, write_cache

    C, D, K, V, n_val, n_test = (1000, 1024, 16, 10, 4, 10) if not smoke.dry else (50, 64, 4, 2, 2, 4)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(C, D)).astype(np.float32)

    def split(name, per):
        y = np.repeat(np.arange(C), per)
        feats = (means[y] + 1.5 * rng.normal(size=(y.size, D))).astype(np.float32)
        return {"paths": [f"{name}/{i}.jpg" for i in range(y.size)], "labels": y, "features": feats}

    splits = {"train": split("train", K), "val": split("val", n_val), "test": split("test", n_test)}
    y_train = splits["train"]["labels"]
    views = np.stack([means[y_train] + 1.5 * rng.normal(size=(y_train.size, D)) for _ in range(V)]).astype(np.float32)
    text = (means[None] + 0.3 * rng.normal(size=(2, C, D))).astype(np.float32)
    attrs = base_attrs(model="synthetic", pretrained="none", dataset="imagenet", embed_dim=D, logit_scale=100.0,
                       fingerprint="s" * 64)
    path = write_cache(smoke.work / "imagenet.h5", attrs=attrs, classnames=[f"class {c}" for c in range(C)],
                       splits=splits, text_features=text, templates=["a photo of a {}.", "{}"], views=views,
                       view_rows=np.arange(y_train.size), dtype="float16")
    return path, {"classes": C, "dim": D, "shots": K, "views": V, "test_rows": C * n_test}


def check_imagenet(smoke: Smoke) -> dict:
    import torch

    path, shape = imagenet_cache(smoke)
    heads = smoke.heads(h for h in all_heads() if h not in PROMPT_HEADS + PRE_PROJECTION_HEADS)
    sets = short_epochs(heads) if smoke.dry else {}
    per_head = {}
    for h in heads:
        if smoke.left_s() < 60:
            per_head[h] = {"skipped": "time budget"}
            continue
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            (row,) = fit_rows(smoke, path, f"imagenet_{h}.jsonl", [h], smoke.device,
                              sets={k: v for k, v in sets.items() if k.startswith(h + ".")},
                              shots=(shape["shots"],), seeds=(1,))
            entry = {"acc": row["acc"], "fit_device": row.get("fit_device")}
        except Exception as err:  # noqa: BLE001
            entry = {"error": f"{type(err).__name__}: {str(err).strip()[:300]}"}
        entry["seconds"] = round(time.perf_counter() - t, 2)
        if torch.cuda.is_available():
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        per_head[h] = entry
    failed = [h for h, e in per_head.items() if "error" in e]
    return {"shape": shape, "heads": per_head, "failed": failed, "ok": not failed}


OOM_HEAD = textwrap.dedent('''
    import torch
    from featbench.heads.zeroshot import ZeroShot

    class OOMHead(ZeroShot):
        """Asks the GPU for 64 TiB (a real CUDA out-of-memory); on a CPU dry run, raises the same error."""

        def fit(self, X, y, **context):
            if torch.cuda.is_available():
                torch.empty(1 << 46, dtype=torch.uint8, device="cuda")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 TiB (dry run)")
''')


def check_oom(smoke: Smoke) -> dict:
    from typer.testing import CliRunner

    from featbench.cli import app
    from featbench.heads import register_head

    (smoke.work / "smoke_heads.py").write_text(OOM_HEAD)
    sys.path.insert(0, str(smoke.work))
    register_head("smoke-oom", "smoke_heads:OOMHead")
    res = CliRunner().invoke(app, ["fit", str(smoke.shared["cache"]), "--heads", "smoke-oom", "--shots", "1",
                                   "--seeds", "1", "--device", smoke.device, "--no-progress",
                                   "--out", str(smoke.work / "oom.jsonl")])
    lines = res.stderr.strip().splitlines()
    one_line = len(lines) == 1 and all(f in lines[0] for f in ("--batch-size", "--jobs", "--device cpu"))
    return {"exit_code": res.exit_code, "stderr": lines[-3:], "ok": res.exit_code == 2 and one_line}


def check_throughput(smoke: Smoke) -> dict:
    if smoke.dry:
        runs, flags = (0, 1), ["--model", "tiny-vit", "--images", "200", "--device", "cpu"]
    else:
        runs, flags = (0, 14), ["--model", "RN50", "--pretrained", "none", "--images", "2048", "--size", "256",
                                "--device", "cuda"]
    found = {}
    for workers in runs:
        js = smoke.work / f"throughput_{workers}.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "extract_throughput.py"), *flags, "--workers", str(workers),
               "--json", str(js), "--workdir", str(smoke.work / f"bench_{workers}")]
        path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, smoke.left_s() - 15),
                             env={**os.environ, "PYTHONPATH": path})
        found[f"workers_{workers}"] = json.loads(js.read_text()) if js.exists() else {"error": res.stderr[-800:]}
    return {**found, "ok": all(v.get("ratio", 0) > 0 for v in found.values())}


CHECKS = [("env", check_env), ("extraction", check_extraction), ("determinism", check_determinism),
          ("cpu_vs_gpu", check_cpu_vs_gpu), ("jobs2", check_jobs2), ("oom", check_oom),
          ("throughput", check_throughput), ("imagenet", check_imagenet)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "smoke-out", help="folder for the summary file")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every check on the CPU at toy sizes")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all checks (the device call's limit)")
    ap.add_argument("--only", default=None, help="comma list of checks to run (default: all)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    smoke = Smoke(out, args.cpu_dry_run, args.budget)
    wanted = set(args.only.split(",")) if args.only else None
    for name, check in CHECKS:
        if wanted is None or name in wanted:
            smoke.run(name, check)
    summary = {"ok": all(r.get("ok") for r in smoke.results.values()), "dry_run": smoke.dry,
               "seconds": round(time.perf_counter() - smoke.t0, 1), "checks": smoke.results}
    (out / "gpu_smoke_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps({k: v.get("ok") for k, v in smoke.results.items()}), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
