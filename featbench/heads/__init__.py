"""Heads by name: the built-ins, plugins from other packages, and any ``package.module:Class``.

``list_heads()`` names every head without importing one (no torch); ``get_head(name, dataset=..., shots=...,
**overrides)`` builds one with its paper defaults for that dataset and shot count, overridden by the caller's
values. Heads from outside featbench register the same way built-ins do (``featbench.heads._registry``):

- a distribution declares ``[project.entry-points."featbench.heads"] my-head = "my_pkg.heads:MyHead"``; its
  heads are found on first use, and imported only when looked up (``FEATBENCH_DISABLE_PLUGIN_AUTOLOAD=1``
  turns this off, as ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does for pytest);
- ``get_head_class("my_pkg.heads:MyHead")`` imports a class by module path and registers it under that text,
  which is how ``--heads my_pkg.heads:MyHead`` works and how fit workers find a cell's head;
- ``register_head(name, target)`` adds one at run time (notebooks, tests).
"""

from __future__ import annotations

from typing import Any

from featbench.errors import FeatbenchError
from featbench.heads._registry import BUILT_IN, MODULE_PATH, PLUGIN, RUN_TIME, Origin, Registry

ENTRY_POINT_GROUP = "featbench.heads"
DISABLE_AUTOLOAD_ENV = "FEATBENCH_DISABLE_PLUGIN_AUTOLOAD"

# name -> "module:Class"; the order is the order tables list heads in.
_BUILT_INS: dict[str, str] = {
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
    # training-free cache/kernel methods of 2023-25 (issue 19)
    "proker": "featbench.heads.proker:ProKeR",
    "ape": "featbench.heads.ape:APE",
    "ape-t": "featbench.heads.ape:APET",
    # CoOp + a meta-net conditioning the context on each image (per-image prompts through the text tower)
    "cocoop": "featbench.heads.cocoop:CoCoOp",
    # transductive: adapts to the unlabeled test features on top of a base head (rows say "transductive": true)
    "transclip": "featbench.heads.transclip:TransCLIP",
}


#: every head featbench knows: built-ins first, then plugins, then heads added at run time
registry = Registry("head", "featbench.heads.base:Head", built_ins=_BUILT_INS, group=ENTRY_POINT_GROUP,
                    disable_env=DISABLE_AUTOLOAD_ENV)
_REGISTRY = registry  # the name tests use to unregister their heads (``_REGISTRY.pop(name, None)``)


def register_head(name: str, target: str | type) -> None:
    """Add a head ("package.module:Class" or the class) under ``name``; the same target twice is a no-op.

    A name that is taken by another target (a built-in, a plugin) is refused with one line.
    """
    registry.add(name, target, Origin(MODULE_PATH if name == target else RUN_TIME))


def list_heads() -> list[str]:
    """Every head name, built-ins first, then plugins; imports none of them."""
    return registry.names()


def get_head_class(name: str) -> type:
    """The class of a registered head, or of a "package.module:Class" (then registered under that text)."""
    if is_module_path(name) and name not in registry:
        registry.add(name, name, Origin(MODULE_PATH))
        try:
            return registry.get(name)
        except FeatbenchError:
            registry.pop(name)  # a module path that does not load is not left behind as a head
            raise
    return registry.get(name)


def is_module_path(name: object) -> bool:
    """Whether a --heads value names a class by module path ("package.module:Class") rather than a head."""
    return isinstance(name, str) and name.count(":") == 1 and all(part.strip() for part in name.split(":"))


def head_origin(name: str) -> str:
    """Where a head comes from: "built-in", "plugin DIST VERSION", "module path" or "register_head"."""
    return str(registry.origin(name))


def plugin_problems() -> dict[str, str]:
    """Plugin name -> why it was refused while scanning (its name is taken, its target is malformed)."""
    return registry.problems()


def get_head(name: str, dataset: str | None = None, shots: int | None = None, **overrides: Any):
    """Instantiate a head with its paper defaults for (dataset, shots), then the caller's overrides."""
    cls = get_head_class(name)
    params = dict(cls.paper_defaults(dataset, shots))
    params.update(overrides)
    head = cls()
    head.set_params(**params)
    return head


__all__ = [
    "list_heads", "get_head", "get_head_class", "register_head", "is_module_path", "head_origin", "plugin_problems",
    "registry", "Registry", "Origin", "BUILT_IN", "PLUGIN", "MODULE_PATH", "RUN_TIME", "ENTRY_POINT_GROUP",
    "DISABLE_AUTOLOAD_ENV",
]
