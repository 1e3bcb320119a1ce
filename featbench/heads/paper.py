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
"""

from __future__ import annotations

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


def epochs_for_shots(table: dict[int, int], shots: int) -> int:
    """The epochs a per-shot table (the papers list 1/2/4/8/16 shots) gives ``shots``: the entry of the
    smallest listed shot count >= shots, the largest one's past the end (3 shots train like 4)."""
    listed = sorted(table)
    return table[next((k for k in listed if k >= int(shots)), listed[-1])]


__all__ = [
    "epochs_for_shots", "FEWSHOT_VAL", "FULL_VAL", "KSHOT_VAL", "SELECTIONS", "IMAGENET_SELECT_TEMPLATES", "IMAGENET_TEMPLATES_8",
    "IMAGENET_COOP_TEMPLATE", "TEMPLATES_1", "TEMPLATES_7", "TEMPLATES_8", "TIP_SCALE", "DASSL_SCALE",
]
