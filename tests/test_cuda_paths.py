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
