"""What each paper's own code used beyond its hyperparameters, as data the protocol reads.

A head declares, as class attributes (defaults in ``featbench.heads.base.Head``):

- ``paper_selection`` — the split its reference searches on, under ``--protocol paper``:
  ``FEWSHOT_VAL`` (CoOp's min(K, 4) val images per class: lpclip), ``FULL_VAL`` (every val image:
  Tip-Adapter's and GDA's ``search_hp`` get all val features), ``KSHOT_VAL`` (K val images per class, drawn
  right after the train shots: LP++ and ProLIP). Datasets without a val split (ImageNet) use held-out train
  rows of that size instead (min(K, 4) for the first two, K for ``KSHOT_VAL``).
- ``paper_search`` — the paper's own procedure searches the head's ``search_space`` on that split (ProLIP's
  Table 1 grid over lr x lambda), so ``paper`` runs that search too.
- ``paper_templates`` — dataset -> the prompt templates its reference averages (looked up by exact string in
  the cache's per-template text features).
- ``paper_classname_style`` — "clean" (``_`` -> space) or "raw"; rows note a cache of the other style.
- ``paper_view_scale`` — the RandomResizedCrop area scale of the augmented views its reference trains on.
- ``reference_selects_on_test`` — datasets whose reference selects on the test split (what ``oracle``
  reproduces; rows say so).

and ``display_name``, how its paper names the method ("TaskRes"), which tables and plots read from the head's
source without importing it (:func:`declared_display_name`).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

FEWSHOT_VAL = "fewshot_val"
FULL_VAL = "full_val"
KSHOT_VAL = "kshot_val"
SELECTIONS = (FEWSHOT_VAL, FULL_VAL, KSHOT_VAL)

#: CLIP's 7 "select" ImageNet templates (Tip-Adapter, GDA, LP++, ProLIP use exactly these on ImageNet)
IMAGENET_SELECT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
#: TaskRes and CLAP (CoOp's code base) add the dataset's CoOp template to the 7: 8 on ImageNet
IMAGENET_TEMPLATES_8 = IMAGENET_SELECT_TEMPLATES + ("a photo of a {}.",)

#: KgCoOp's hand-crafted classifier (trainers/kgcoop.py CUSTOM_TEMPLATES) is one template per dataset: on ImageNet
#: "a photo of a {}." alone, the other catalog datasets' caches already hold just their CoOp template
IMAGENET_COOP_TEMPLATE = ("a photo of a {}.",)

TEMPLATES_1 = {"imagenet": IMAGENET_COOP_TEMPLATE}
TEMPLATES_7 = {"imagenet": IMAGENET_SELECT_TEMPLATES}
TEMPLATES_8 = {"imagenet": IMAGENET_TEMPLATES_8}

#: RandomResizedCrop area scales: Tip-Adapter's cache, GDA, LP++, ProLIP / Dassl's training transform
TIP_SCALE = (0.5, 1.0)
DASSL_SCALE = (0.08, 1.0)


def declared_display_name(target: str) -> str:
    """The ``display_name`` the head class at ``target`` ("package.module:Class") declares in its own body, or "".

    Read from the module's source, not by importing it, so `featbench table` and `plot` name heads without
    loading torch, scikit-learn or a plugin's dependencies; the loaded class answers only where there is no
    source to read (a class defined in a notebook). A subclass that declares none shows its registry name.
    """
    module, _, qualname = str(target).partition(":")
    found = _display_name_in_source(module, qualname)
    if found is None:
        cls = getattr(sys.modules.get(module), qualname, None)
        found = vars(cls).get("display_name", "") if isinstance(cls, type) else ""
    return str(found or "")


@functools.lru_cache(maxsize=None)
def _display_name_in_source(module: str, qualname: str) -> str | None:
    """The string literal assigned to ``display_name`` in the class body; None when the source is not at hand."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if not origin or not str(origin).endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == qualname:
            return _declared_string(node, "display_name")
    return None


def _declared_string(cls_node: ast.ClassDef, attr: str) -> str:
    for stmt in cls_node.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        value = getattr(stmt, "value", None)
        if any(isinstance(t, ast.Name) and t.id == attr for t in targets) and isinstance(value, ast.Constant) \
                and isinstance(value.value, str):
            return value.value
    return ""


class _BuiltInDisplayNames(Mapping):
    """Built-in head name -> its declared display name, in registry order (what plots key colours by)."""

    def _names(self) -> dict[str, str]:
        from featbench.heads import BUILT_IN, registry  # lazy: the registry package is initialised first

        return {n: declared_display_name(registry.target(n)) or n for n in registry.names()
                if registry.origin(n).kind == BUILT_IN}

    def __getitem__(self, name: str) -> str:
        return self._names()[name]

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


#: the built-in heads' paper names, read from each head's ``display_name`` (kept for callers that want a mapping)
DISPLAY_NAMES: Mapping[str, str] = _BuiltInDisplayNames()


def epochs_for_shots(table: dict[int, int], shots: int) -> int:
    """The epochs a per-shot table (the papers list 1/2/4/8/16 shots) gives ``shots``: the entry of the
    smallest listed shot count >= shots, the largest one's past the end (3 shots train like 4)."""
    listed = sorted(table)
    return table[next((k for k in listed if k >= int(shots)), listed[-1])]



class TipAdapterSetup:
    """Tip-Adapter's data setup, which the training-free heads built on its code (Tip-Adapter, GDA, ProKeR, APE)
    keep: the search on every val feature, ImageNet's 7 templates, clean class names, cache views at
    RandomResizedCrop scale (0.5, 1), and on ImageNet a "val" set that is the test set. A head lists it before
    ``Head`` to declare all five ``paper_*`` facts at once."""

    paper_selection = FULL_VAL
    paper_templates = TEMPLATES_7
    paper_classname_style = "clean"
    paper_view_scale = TIP_SCALE
    reference_selects_on_test = ("imagenet",)

__all__ = ["TipAdapterSetup", 
    "DISPLAY_NAMES", "declared_display_name", "epochs_for_shots", "FEWSHOT_VAL", "FULL_VAL", "KSHOT_VAL", "SELECTIONS",
    "IMAGENET_SELECT_TEMPLATES", "IMAGENET_TEMPLATES_8", "IMAGENET_COOP_TEMPLATE", "TEMPLATES_1", "TEMPLATES_7",
    "TEMPLATES_8", "TIP_SCALE", "DASSL_SCALE",
]
