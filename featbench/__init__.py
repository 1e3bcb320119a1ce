"""featbench: feature-cache-first few-shot adaptation of CLIP models.

The public Python API (numpydoc in :mod:`featbench.api`)::

    import featbench
    cache = featbench.open_cache("cache/RN50--openai/caltech101.h5")
    row = featbench.evaluate("taskres", cache, shots=16, seed=1)          # one cell, the CLI's row
    rows = featbench.fit([cache.path], heads=["zeroshot", "taskres"], out="results/r.jsonl")
    print(featbench.make_table(featbench.read_results("results/r.jsonl")))

Bring your own method: subclass ``featbench.Head`` (``fit`` and ``decision_function``) and
``featbench.register_head("my-head", MyHead)``, or pass ``"package.module:Class"`` wherever a head name goes.

Importing the package is cheap on purpose (no torch, no open_clip, no h5py): the names above load on first
use (a module ``__getattr__``), so ``featbench --help`` and ``featbench table`` start fast.
"""

from __future__ import annotations

import importlib

from featbench.version import __version__

#: public name -> "module:attribute", imported on first access
_LAZY = {
    "open_cache": "featbench.api:open_cache",
    "import_features": "featbench.api:import_features",
    "evaluate": "featbench.api:evaluate",
    "fit": "featbench.api:fit",
    "read_results": "featbench.api:read_results",
    "make_table": "featbench.api:make_table",
    "get_head": "featbench.api:get_head",
    "list_heads": "featbench.api:list_heads",
    "register_head": "featbench.api:register_head",
    "Head": "featbench.api:Head",
    "Cache": "featbench.api:Cache",
    "FitSpec": "featbench.api:FitSpec",
    "FeatbenchError": "featbench.errors:FeatbenchError",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'featbench' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
