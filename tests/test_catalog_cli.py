"""`featbench datasets` and `featbench heads [NAME]`: headings, hyperparameters with types and bounds, paper
defaults per dataset, search space."""

from __future__ import annotations


from conftest import run_cli as _run  # noqa: E402


def test_datasets_has_column_headings():
    res = _run("datasets")
    assert res.exit_code == 0
    first = res.output.splitlines()[0].split()
    assert first[:2] == ["name", "group"] and "splits" in first
    assert any(ln.startswith("caltech101 ") for ln in res.output.splitlines()[1:])


def test_heads_name_shows_params_defaults_and_search_space():
    res = _run("heads", "taskres")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "alpha" in out and "default 0.5" in out and "float" in out
    assert "(8,16-shot): alpha=0.5, epochs=200, lr=0.002" in out  # the paper's schedule by shot count
    assert "imagenet lr=0.0002" in out and "oxford_flowers alpha=1.0" in out
    assert "searches: alpha in [0.25, 0.5, 1.0, 2.0]" in out
    assert "runtime setting" in out  # device / random_state are not hyperparameters


def test_declared_params_show_their_bounds():
    from featbench.cli.catalog import describe_head
    from featbench.heads.base import Head
    from featbench.heads.spec import Param

    class Toy(Head):
        paper = "Toy 2026"
        hyperparams = {"lr": Param("float", low=0, low_open=True, doc="step size")}

        def __init__(self, lr=0.1, epochs=3):
            self.lr, self.epochs = lr, epochs

    text = describe_head("toy", Toy)
    lr_line = next(ln for ln in text.splitlines() if ln.strip().startswith("lr"))
    assert "float in (0, inf)" in lr_line and "step size" in lr_line and "default 0.1" in lr_line
    epochs_line = next(ln for ln in text.splitlines() if ln.strip().startswith("epochs"))
    assert "int" in epochs_line and "default 3" in epochs_line  # undeclared: the signature's default type
