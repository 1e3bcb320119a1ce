"""The CUDA code paths that a CPU can check: the pinned-buffer wait, determinism flags, fit_device, the GPU
plans of --jobs and Ray, the out-of-memory line, and extraction precision in the fingerprint (issue 20)."""

import numpy as np
import torch

from featbench.heads import _torch as T
from featbench.heads import get_head


class _FakeGpu:
    """A copy engine whose copies stay in flight until an event recorded after them is waited on."""

    def __init__(self):
        self.pending = []

    def copy(self, dst, src):
        self.pending.append((dst, src))

    def run_pending(self):
        for dst, src in self.pending:
            dst.copy_(src)
        self.pending.clear()

    def new_event(self):
        gpu = self

        class Event:
            def record(self):
                pass

            def synchronize(self):
                gpu.run_pending()

        return Event()


def _staging(gpu):
    return T.HostStaging([((4,), torch.float32)], "cpu", copy=gpu.copy, new_event=gpu.new_event)


def test_refilling_waits_for_the_upload_in_flight():
    gpu = _FakeGpu()
    staging = _staging(gpu)
    (host,) = staging.fill()
    host.fill_(1.0)
    (dev,) = staging.upload()  # epoch 1's copy is still in flight
    (host,) = staging.fill()  # epoch 2 refills: must wait for epoch 1's copy first
    host.fill_(2.0)
    gpu.run_pending()  # whatever the GPU had not copied yet, it copies now
    assert torch.equal(dev, torch.full((4,), 1.0)), "epoch 1 trained on epoch 2's data"
    staging.upload()
    gpu.run_pending()
    assert torch.equal(dev, torch.full((4,), 2.0))


def test_cpu_staging_needs_no_copy():
    staging = T.HostStaging([((2, 3), torch.float32), ((2,), torch.long)], "cpu")
    host = staging.fill()
    assert [a.data_ptr() for a in staging.upload()] == [a.data_ptr() for a in host]


def _fit_rows(name, monkeypatch=None, fake=False):
    rng = np.random.default_rng(0)
    C, D, k = 4, 8, 4
    text = rng.normal(size=(1, C, D)).astype(np.float32)
    y = np.repeat(np.arange(C), k)
    X = (text[0][y] + rng.normal(size=(len(y), D))).astype(np.float32)
    views = (X[None] + rng.normal(size=(2,) + X.shape)).astype(np.float32)
    if fake:
        made = []
        real = T.HostStaging

        class Staged(real):  # separate "device" buffers, copies held until waited on
            def __init__(self, shapes, device, **kw):
                gpu = _FakeGpu()
                made.append(gpu)
                super().__init__(shapes, device, copy=gpu.copy, new_event=gpu.new_event)

            def upload(self):
                out = super().upload()
                self._in_flight.synchronize()  # the training step reads after the copy (stream order)
                return out

        monkeypatch.setattr(T, "HostStaging", Staged)
    h = get_head(name, epochs=3, batch_size=8, random_state=1).fit(X, y, text=text, views=views)
    if fake:
        assert made, f"{name} does not stage its epochs through HostStaging"
    return h.decision_function(X)


def test_taskres_and_tip_train_through_the_staging(monkeypatch):
    for name in ("taskres", "tip-adapter-f"):
        plain = _fit_rows(name)
        staged = _fit_rows(name, monkeypatch, fake=True)
        np.testing.assert_array_equal(plain, staged)
        monkeypatch.undo()


# ----------------------------------------------------------------------------------------------------
# devices: determinism before CUDA starts, cuda:N made current, what a row records, the --jobs and Ray plans
# ----------------------------------------------------------------------------------------------------
import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from featbench import devices  # noqa: E402
from featbench.cli import app  # noqa: E402
from featbench.results import read_rows, row_key  # noqa: E402
from featbench.backends import run_cells_on_free_gpu  # noqa: E402
from featbench.runner import execute  # noqa: E402
from featbench.fitspec import FitSpec  # noqa: E402

from test_protocol import NCMHead, make_cache, test_heads  # noqa: E402,F401  (fixture)


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch answers as a machine with one 'Fake GPU'; determinism settings are restored afterwards."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(before)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def test_determinism_only_where_cuda_may_run(fake_gpu, monkeypatch):
    assert devices.use_deterministic("cpu") is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not torch.are_deterministic_algorithms_enabled()
    assert devices.use_deterministic("cuda", fast=True) is False
    assert not torch.are_deterministic_algorithms_enabled()
    assert devices.use_deterministic("cuda:0") is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == devices.CUBLAS_WORKSPACE_CONFIG
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("device, want", [("cpu", False), ("cuda", True), ("cuda:0", True)])
def test_extraction_turns_determinism_on_before_the_encoder_starts_cuda(fake_gpu, monkeypatch, tmp_path, device, want):
    """Same images, same bits: deterministic kernels (warn-only: a forward pass must not stop over one) and
    fixed cuDNN algorithms are set before `prepare` loads the encoder onto the GPU."""
    from featbench import extract
    from featbench.extract_spec import ExtractSpec

    seen = {}

    def prepare(spec, say):
        seen.update(enabled=torch.are_deterministic_algorithms_enabled(),
                    warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                    cudnn=(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic))
        raise KeyboardInterrupt  # stop before any encoding

    monkeypatch.setattr(extract, "prepare", prepare)
    torch.use_deterministic_algorithms(False)
    with pytest.raises(KeyboardInterrupt):
        extract.run_extract(ExtractSpec("caltech101", tmp_path, device=device))
    assert seen["enabled"] is want
    if want:
        assert seen["warn_only"] and seen["cudnn"] == (False, True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == devices.CUBLAS_WORKSPACE_CONFIG


def test_cuda_n_becomes_the_current_device(fake_gpu, monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(str(d)))
    assert str(devices.resolve_device("cuda:1")) == "cuda:1" and chosen == ["cuda:1"]
    devices.resolve_device("cuda:0")
    devices.resolve_device("cuda")
    assert chosen == ["cuda:1"]


def test_fit_device_names_the_gpu(fake_gpu):
    assert devices.fit_device_fields("cpu") == {"fit_device": "cpu"}
    assert devices.fit_device_fields("cuda:0") == {"fit_device": "cuda Fake GPU", "deterministic": False}
    devices.use_deterministic("cuda")
    assert devices.fit_device_fields("cuda") == {"fit_device": "cuda Fake GPU"}


@pytest.mark.parametrize("jobs, device, gpus, want", [
    (4, "cpu", 0, ["cpu"] * 4),
    (3, "auto", 0, ["auto"] * 3),
    (2, "cuda", 1, ["cuda:0"]),  # capped: one CUDA context per GPU
    (4, "cuda", 2, ["cuda:0", "cuda:1"]),
    (2, "cuda", 4, ["cuda:0", "cuda:1"]),
    (3, "auto", 8, ["cuda:0", "cuda:1", "cuda:2"]),
    (4, "cuda:3", 4, ["cuda:3"]),
])
def test_jobs_spread_over_gpus_one_worker_each(jobs, device, gpus, want):
    assert devices.plan_gpu_workers(jobs, device, gpus) == want


def test_jobs_on_cuda_without_gpus_is_one_line():
    with pytest.raises(devices.FeatbenchError, match="--device cpu"):
        devices.plan_gpu_workers(2, "cuda", 0)


def test_a_worker_fits_on_the_gpu_it_took(monkeypatch):
    import queue

    import featbench.backends as R

    free = queue.Queue()
    free.put("cuda:1")
    seen = []
    monkeypatch.setattr(R, "run_cells_bounded", lambda cells, threads: seen.append([c.device for c in cells]) or [])
    cells = [types.SimpleNamespace(device="cuda", seed=s) for s in (1, 2)]
    monkeypatch.setattr(R, "replace", lambda c, **kw: types.SimpleNamespace(**{**vars(c), **kw}))
    run_cells_on_free_gpu(cells, 1, free)
    assert seen == [["cuda:1", "cuda:1"]] and free.get_nowait() == "cuda:1"  # handed back


def test_ray_resources():
    assert devices.ray_resources("cpu", 8) == {"num_cpus": 1}
    assert devices.ray_resources("cuda") == {"num_cpus": 1, "num_gpus": 1}
    assert devices.ray_resources("cuda:1") == {"num_cpus": 1, "num_gpus": 1}
    assert devices.ray_resources("auto", 0) == {"num_cpus": 1}
    assert devices.ray_resources("auto", 2) == {"num_cpus": 1, "num_gpus": 1}


def _fake_ray(asked):
    class RayTaskError(Exception):
        pass

    def remote(**opts):
        asked.append(opts)
        return lambda fn: types.SimpleNamespace(remote=lambda *a: fn(*a))

    return types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 2, "GPU": 1},
                                 remote=remote, get=lambda ref: ref,
                                 exceptions=types.SimpleNamespace(RayTaskError=RayTaskError))


def test_ray_tasks_ask_for_a_gpu_and_rows_record_it(tmp_path, test_heads, fake_gpu, monkeypatch):
    asked = []
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(asked))
    path, _ = make_cache(tmp_path / "c.h5")
    spec = FitSpec(caches=[path], heads=["test-ncm"], shots=[1], seeds=[1, 2], out=tmp_path / "r.jsonl",
                   device="cuda:0", ray_address="local", progress=False)
    rows = execute(spec)
    assert asked == [{"num_cpus": 1, "num_gpus": 1}]
    assert {r["fit_device"] for r in rows} == {"cuda Fake GPU"} and not any("deterministic" in r for r in rows)
    assert torch.are_deterministic_algorithms_enabled()
    cpu_rows = execute(spec.with_(device="cpu", ray_address=None))  # a CPU row answers the same cell
    assert cpu_rows == [] and len(read_rows(spec.out)) == 2


def test_fast_rows_say_they_are_not_deterministic(tmp_path, test_heads, fake_gpu):
    path, _ = make_cache(tmp_path / "c.h5")
    res = CliRunner().invoke(app, ["fit", str(path), "--heads", "test-ncm", "--shots", "1", "--seeds", "1",
                                   "--device", "cuda", "--fast", "--out", str(tmp_path / "r.jsonl"), "--no-progress"])
    assert res.exit_code == 0, res.output
    (row,) = read_rows(tmp_path / "r.jsonl")
    assert row["fit_device"] == "cuda Fake GPU" and row["deterministic"] is False
    assert "fit_device" not in repr(row_key(row)) and "cuda" not in repr(row_key(row))
    assert not torch.are_deterministic_algorithms_enabled()


class OOMHead(NCMHead):
    name = "test-oom"

    def fit(self, X, y, **context):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                          "capacity of 79.10 GiB of which 1.2 GiB is free.\nlong advice")


def test_out_of_memory_is_one_line_naming_the_fix(tmp_path, test_heads):
    import featbench.heads as H

    H.register_head("test-oom", f"{__name__}:OOMHead")
    try:
        path, _ = make_cache(tmp_path / "c.h5")
        res = CliRunner().invoke(app, ["fit", str(path), "--heads", "test-oom", "--shots", "1", "--seeds", "1",
                                       "--out", str(tmp_path / "r.jsonl"), "--no-progress"])
    finally:
        H._REGISTRY.pop("test-oom", None)
    assert res.exit_code == 2
    (line,) = res.stderr.strip().splitlines()
    assert "Tried to allocate 20.00 GiB" in line and "Traceback" not in res.output
    assert all(fix in line for fix in ("--batch-size", "--jobs", "--device cpu"))


# ----------------------------------------------------------------------------------------------------
# extraction precision: in the fingerprint, and the pre-projection projection in float32
# ----------------------------------------------------------------------------------------------------
from featbench.cache import compute_fingerprint  # noqa: E402
from featbench.encoders import Encoder  # noqa: E402


def test_precision_is_part_of_the_fingerprint():
    enc = Encoder("tiny-vit", "none", "cpu")
    cpu = enc.preprocess_info()
    assert enc.precision == "fp32" and "precision" not in cpu  # CPU caches keep their fingerprint
    enc.amp = True  # what a CUDA encoder runs with
    gpu = enc.preprocess_info()
    assert gpu["precision"] == "fp16-autocast" and {**gpu, "precision": None} != cpu
    fp = lambda info: compute_fingerprint(enc.name, enc.pretrained_label, info, enc.checkpoint_sha256)  # noqa: E731
    assert fp(cpu) != fp(gpu)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_projection_runs_in_float32_under_autocast(name, monkeypatch):
    enc = Encoder(name, "none", "cpu")
    monkeypatch.setattr(enc, "_autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))  # a CUDA stand-in
    feats, pre = enc.encode_images(torch.randn(4, 3, 32, 32), pre_projection=True)
    assert feats.dtype == pre.dtype == torch.float32
    w, b = enc.image_projection()
    rebuilt = pre.numpy() @ w + (0 if b is None else b)
    np.testing.assert_allclose(rebuilt, feats.numpy(), atol=1e-5)  # a bfloat16 projection misses by ~1e-2
    text, text_pre = enc.encode_text(["cat", "dog"], ["a {}."], pre_projection=True)
    np.testing.assert_allclose(text_pre @ enc.text_projection(), text, atol=1e-5)


def test_a_kernel_refused_by_deterministic_mode_names_fast():
    err = RuntimeError("index_add_cuda_ does not have a deterministic implementation, but you set "
                       "'torch.use_deterministic_algorithms(True)'. You can turn off determinism ...")
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = err
    line = devices.device_error_message(wrapped)
    assert line.startswith("index_add_cuda_ does not have a deterministic implementation") and "--fast" in line
    assert devices.device_error_message(ValueError("other")) is None


# ----------------------------------------------------------------------------------------------------
# batched fits: a stack never plans for more than its share of the GPU's free memory
# ----------------------------------------------------------------------------------------------------
import featbench.fitting as fitting  # noqa: E402


def test_runs_per_stack():
    assert fitting.runs_per_stack(10**6, None) is None  # CPU: no cap
    per_run = 10**6 * fitting.DEVICE_BYTES_PER_INPUT_BYTE
    assert fitting.runs_per_stack(10**6, 8 * per_run) == 4
    assert fitting.runs_per_stack(10**9, 10**6) == 1  # one run always goes


def test_batched_fits_are_split_into_stacks_that_fit(monkeypatch):
    X = np.zeros((100, 250), dtype=np.float32)  # 100 kB a run
    ctx = {"views": np.zeros((3, 100, 250), dtype=np.float32), "classnames": ["a"]}
    assert fitting.input_bytes(X, ctx) == 400_000
    sizes = []

    class Stacked:
        device = "cuda"

        def batch_key(self, X, y, context):
            return "same"

        def fit(self, X, y, **kw):  # pragma: no cover - the runs come as stacks
            raise AssertionError

        @classmethod
        def fit_batched(cls, fits):
            sizes.append(len(fits))
            return [f[0] for f in fits]

    heads = [Stacked() for _ in range(7)]
    fits = [(h, X, None, ctx) for h in heads]
    free = 3 * 400_000 * fitting.DEVICE_BYTES_PER_INPUT_BYTE * 2  # room for 3 runs at a 0.5 share
    monkeypatch.setattr(fitting, "free_device_memory", lambda device: free)
    assert fitting.fit_all(fits) == heads and sizes == [3, 3, 1]
    sizes.clear()
    monkeypatch.setattr(fitting, "free_device_memory", lambda device: None)
    assert fitting.fit_all(fits) == heads and sizes == [7]


# ----------------------------------------------------------------------------------------------------
# extraction defaults: unchanged on a CPU, workers and a GPU-sized batch on CUDA
# ----------------------------------------------------------------------------------------------------
from featbench.extract import loader_options  # noqa: E402
from featbench.extract_spec import ExtractSpec, extraction_defaults  # noqa: E402


def test_extraction_defaults_per_device(tmp_path):
    assert extraction_defaults("cpu") == (64, 0) == extraction_defaults("auto")  # this machine has no GPU
    assert extraction_defaults("cuda", cores=32) == (256, 16)
    assert extraction_defaults("cuda:1", cores=6) == (256, 6)
    spec = ExtractSpec("caltech101", tmp_path, device="cpu")
    assert (spec.batch_size, spec.workers) == (64, 0)
    spec = ExtractSpec("caltech101", tmp_path, device="cuda")
    assert spec.batch_size == 256 and spec.workers == min(16, len(os.sched_getaffinity(0)))
    spec = ExtractSpec("caltech101", tmp_path, device="cuda", batch_size=32, workers=0)
    assert (spec.batch_size, spec.workers) == (32, 0)  # flags given win
    assert spec.replace(device="cuda:0").batch_size == 32


def test_loader_options():
    assert loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    opts = loader_options(8, "cuda:0")
    assert opts["num_workers"] == 8 and opts["pin_memory"] and opts["prefetch_factor"] == 4


# ----------------------------------------------------------------------------------------------------
# training loops: state stays on the device, choices as before
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_device", [False, True])
def test_best_iterate_chooses_as_the_python_comparison_did(on_device, monkeypatch):
    accs = [0.5, 0.75, 0.25, 0.75, 0.5]
    if on_device:  # the torch.where branch a GPU takes, run on CPU tensors
        real = T.BestIterate.__init__

        def init(self, *tensors):
            real(self, *tensors)
            self.on_cpu = False
            self.acc, self.step = torch.full((), -1.0), torch.full((), -1, dtype=torch.long)

        monkeypatch.setattr(T.BestIterate, "__init__", init)
    best = T.BestIterate(torch.zeros(2))
    py = (-1.0, -1, None)
    for step, acc in enumerate(accs, start=1):
        w = torch.full((2,), float(step))
        best.offer(torch.tensor(acc), step, w)
        if acc >= py[0]:
            py = (acc, step, w.clone())
    (kept,), step = best.kept()
    assert step == py[1] == 4 and torch.equal(kept, py[2])  # ties go to the later step


def test_one_permutation_per_epoch_whatever_the_device():
    a = list(T.minibatches(10, 4, T.generator(3)))
    b = list(T.minibatches(10, 4, T.generator(3), device="cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 3


def test_tip_search_blocks_sized_for_the_device_give_the_same_counts(monkeypatch):
    from featbench.heads import tip_adapter as tip

    cpu, gpu = tip.search_blocks("cpu"), tip.search_blocks(torch.device("cuda"))
    assert all(gpu[k] >= 8 * cpu[k] for k in cpu)
    g = torch.Generator().manual_seed(0)
    C, K, D, n = 6, 4, 8, 500
    keys = T.l2norm(torch.randn(C * K, D, generator=g))
    fv = T.l2norm(torch.randn(n, D, generator=g))
    zs, yv = 10 * torch.randn(n, C, generator=g), torch.arange(n) % C
    betas, alphas = tip.search_grid([7.0, 3.0], (40, 10))
    small = dict(cpu, row=64 * C * K, alpha=64)  # several row and alpha blocks
    monkeypatch.setattr(tip, "search_blocks", lambda device: small)
    blocked = tip.search_counts(fv, keys, zs, yv, betas, alphas, C, K)
    monkeypatch.setattr(tip, "search_blocks", lambda device: gpu)
    assert torch.equal(tip.search_counts(fv, keys, zs, yv, betas, alphas, C, K), blocked)


def test_jobs_on_gpus_hand_each_group_a_free_device_across_loky_workers(tmp_path, test_heads, monkeypatch):
    """The GPU-token path of --jobs, end to end through real loky workers, with "cpu" standing in for GPUs."""
    import featbench.runner as R

    path, _ = make_cache(tmp_path / "c.h5")
    spec = FitSpec(caches=[path], heads=["test-ncm"], shots=[1, 2], seeds=[1, 2], out=tmp_path / "serial.jsonl",
                   progress=False)
    serial = execute(spec)
    announced = []
    monkeypatch.setattr(R, "may_use_cuda", lambda device: True)
    monkeypatch.setattr(R, "worker_gpus", lambda jobs, device, announce: ["cpu", "cpu"])
    parallel = execute(spec.with_(out=tmp_path / "gpus.jsonl", jobs=3), announce=announced.append)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("fit_seconds", "timestamp")} for r in rows]  # noqa: E731
    assert strip(parallel) == strip(serial) and len(serial) == 4
