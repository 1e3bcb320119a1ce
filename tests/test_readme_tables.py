"""The README's figures from the real fixtures come from benchmarks/readme_tables.py and cannot drift.

README.md quotes benchmarks/readme_tables.md (the script's committed output) block for block; the real test
recomputes the cheap rows (zero-shot) from the fixture and finds them in both files.
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO_ROOT


def _benchmark(name: str):
    """A script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    return _benchmark("readme_tables")


def test_readme_quotes_the_saved_figures_verbatim():
    rt = _script()
    saved = rt.parse(rt.SAVED.read_text(encoding="utf-8"))
    assert set(saved) == set(rt.BLOCKS) == {"imagenet-fixture", "stronger-heads", "transclip", "b2n", "compare"}
    assert rt.differences(rt.README.read_text(encoding="utf-8"), saved) == []
    assert rt.main(["--check", "--saved"]) == 0


def test_a_drifted_figure_is_reported_and_updated():
    rt = _script()
    saved = rt.parse(rt.SAVED.read_text(encoding="utf-8"))
    readme = rt.README.read_text(encoding="utf-8")
    drifted = dict(saved, b2n=saved["b2n"].replace("/", "|", 1))
    assert len(rt.differences(readme, drifted)) == 1
    assert rt.differences(rt.update(readme, drifted), drifted) == []
    assert rt.update(readme, saved) == readme  # unchanged figures keep README's line wrapping


@pytest.mark.real
def test_recomputed_zeroshot_rows_match_the_saved_figures(real_fixtures):
    rt = _script()
    blocks = rt.compute(real_fixtures, heads=("zeroshot",))
    assert blocks["imagenet-fixture"].splitlines()[2].startswith("| zeroshot | ")
    assert rt.differences(rt.SAVED.read_text(encoding="utf-8"), blocks, partial=True) == []
    assert rt.differences(rt.README.read_text(encoding="utf-8"), blocks, partial=True) == []


def _param_counts():
    return _benchmark("param_counts")


def test_readme_lists_the_trainable_params_of_every_built_in_head():
    from featbench.heads import BUILT_IN, head_origin, list_heads

    pc = _param_counts()
    block = pc.BLOCK.search(pc.README.read_text(encoding="utf-8"))
    assert block is not None
    named = {line.split("(`")[1].split("`)")[0] for line in block["body"].splitlines()[2:]}
    assert named == {h for h in list_heads() if head_origin(h) == BUILT_IN}
