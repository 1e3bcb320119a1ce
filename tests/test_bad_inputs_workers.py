"""After `kill -9` of `featbench fit --jobs 2`, its loky workers exit within seconds (they lingered ~6 minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from featbench.runner import start_parent_watchdog

REPO = Path(__file__).resolve().parents[1]

SLOW_HEAD = '''
import os, time
import numpy as np
from featbench.heads.base import Head
from featbench.heads.spec import Param


class SlowHead(Head):
    """Writes its worker pid, then computes for a long time (a cell that outlives its parent)."""

    name = "test-slow"
    hyperparams = {"random_state": Param("int"), "device": Param("str")}

    def __init__(self, random_state=0, device="cpu"):
        self.random_state = random_state
        self.device = device

    def fit(self, X, y, **context):
        with open(os.environ["SLOW_PIDS"], "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        time.sleep(120)
        return self

    def decision_function(self, X):
        return np.zeros((len(X), 3))
'''

DRIVER = '''
import sys
sys.path.insert(0, sys.argv[1])
from featbench.heads import register_head
from featbench.runner import run_fit

register_head("test-slow", "slowhead:SlowHead")
run_fit([sys.argv[2]], heads=["test-slow"], shots=[1], seeds=[1, 2, 3, 4], out=sys.argv[3], jobs=2, progress=False)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and fork semantics of Linux")
def test_workers_exit_when_fit_is_killed(tmp_path):
    from test_bad_inputs import tiny_cache

    cache = tiny_cache(tmp_path / "c.h5")
    (tmp_path / "slowhead.py").write_text(SLOW_HEAD)
    pids = tmp_path / "pids.txt"
    env = dict(os.environ, SLOW_PIDS=str(pids), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(cache), str(tmp_path / "r.jsonl")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.1)
            if pids.exists():
                workers = sorted({int(x) for x in pids.read_text().split()})
        assert workers, "no worker started a cell"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "loky workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_watchdog_exits_a_child_whose_parent_died(tmp_path):
    """The mechanism alone: a grandchild watching its parent exits right after the parent is killed."""
    code = textwrap.dedent('''
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            from featbench.runner import start_parent_watchdog
            start_parent_watchdog(os.getppid(), interval=0.05)
            print(os.getpid(), flush=True)
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    child = int(proc.stdout.readline())
    assert _alive(child)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive
    assert callable(start_parent_watchdog)
