"""Shared test set-up: offline hub, paths to the optional real-feature fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A hub lookup without this hangs ~45 s on a machine with no internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_FIXTURES = Path(os.environ.get("FEATBENCH_REAL_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "real-vitb32"))


@pytest.fixture
def real_fixtures() -> Path:
    """Directory of the real CLIP ViT-B/32 feature fixtures; skips the test where ../shared is absent."""
    if not (REAL_FIXTURES / "imagenet.npz").exists():
        pytest.skip(f"real-feature fixtures not found at {REAL_FIXTURES}")
    return REAL_FIXTURES


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models and arrays: one intra-op thread is far faster than two when the 2 cores are shared.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
