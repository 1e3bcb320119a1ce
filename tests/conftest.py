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


def run_cli(*args):
    """`featbench ARGS` in-process (typer's CliRunner); paths and numbers given as themselves."""
    from typer.testing import CliRunner

    from featbench.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    """A user error: exit 2, no traceback, exactly one `featbench: error:` line containing every needle."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("featbench: error:"), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def enc():
    """A tiny open_clip ViT with random weights (no download), shared by one test module."""
    from featbench.encoders import Encoder

    return Encoder("tiny-vit", "none", "cpu")


@pytest.fixture(scope="module")
def tower(enc):
    """That model's frozen text tower, as prompt learners receive it."""
    from featbench.texttower import TextTower

    return TextTower.from_model(enc.model, enc.tokenizer)
