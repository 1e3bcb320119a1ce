"""Head registry: names -> estimator classes, imported lazily so listing heads needs no torch.

``list_heads()`` names every head; ``get_head(name, dataset=..., shots=..., **overrides)`` builds one with
its paper defaults for that dataset and shot count, overridden by the caller's values.
"""

from __future__ import annotations

import importlib
from typing import Any

from featbench.errors import FeatbenchError

# name -> "module:Class"; the order is the order tables list heads in.
_REGISTRY: dict[str, str] = {
    "zeroshot": "featbench.heads.zeroshot:ZeroShot",
    "linear-probe": "featbench.heads.linear_probe:LinearProbe",
    "tip-adapter": "featbench.heads.tip_adapter:TipAdapter",
    "tip-adapter-f": "featbench.heads.tip_adapter:TipAdapterF",
    "taskres": "featbench.heads.taskres:TaskRes",
    "clip-adapter": "featbench.heads.clip_adapter:CLIPAdapter",
    "gda": "featbench.heads.gda:GDA",
    "lp++": "featbench.heads.lpplusplus:LPPlusPlus",
    "clap": "featbench.heads.clap:CLAP",
    "prolip": "featbench.heads.prolip:ProLIP",
    # tunes CLIP's text projection on the few-shot data; mainly a base for TaskRes* (taskres.base=text-projection)
    "text-projection": "featbench.heads.text_projection:TextProjection",
    # prompt learners: run the cache's own text tower at fit time (featbench.texttower)
    "coop": "featbench.heads.coop:CoOp",
    "kgcoop": "featbench.heads.coop:KgCoOp",
}


def register_head(name: str, target: str) -> None:
    """Add a head ("module:Class") to the registry (plugins, tests)."""
    _REGISTRY[name] = target


def list_heads() -> list[str]:
    return list(_REGISTRY)


def get_head_class(name: str):
    if name not in _REGISTRY:
        raise FeatbenchError(f"unknown head '{name}'; choose from: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_head(name: str, dataset: str | None = None, shots: int | None = None, **overrides: Any):
    """Instantiate a head with its paper defaults for (dataset, shots), then the caller's overrides."""
    cls = get_head_class(name)
    params = dict(cls.paper_defaults(dataset, shots))
    params.update(overrides)
    head = cls()
    head.set_params(**params)
    return head


__all__ = ["list_heads", "get_head", "get_head_class", "register_head"]
