"""The shape of a result table, shared by aggregation (featbench.tables), rendering (featbench.table_render)
and the base-to-new table (featbench.b2n_table): constants, the :class:`Table` object and the row orders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from featbench.errors import FeatbenchError
from featbench.fitspec import PROTOCOLS  # noqa: F401  (defined once, in the evaluation layer)
from featbench.heads import registry
from featbench.heads.paper import declared_display_name

DIMS = ("dataset", "head", "shots")
METRICS = ("acc", "mean_per_class_recall")
FORMATS = ("csv", "latex", "markdown")
AVERAGE = "Average"
MISSING = "—"
ORACLE_NOTE = "hyperparameters selected on the test set (oracle protocol): not a few-shot result; never bold or ranked."
FALLBACK_NOTE = ("zero-shot CLIP fallback: the head cannot score classes it was not trained on, so this is "
                 "zero-shot CLIP's New (and the H built on it); never bold or ranked.")
TRANSDUCTIVE_NOTE = ("transductive: the head adapted to the unlabeled test images it is scored on (TransCLIP); not "
                     "comparable with inductive heads, so never bold or ranked against them.")
PUBLISHED_NOTE = ("Published numbers: [pub P, Δ D] is the number a paper publishes for the cell "
                  "(featbench/published_data/ledger.csv; listed by: featbench published) and D = ours - P, matched on head, "
                  "encoder, dataset, shots and protocol.")
OVERRIDES_NOTE = ("(k=v) in a label: a parameter the user set (--set/--grid/the API); without it a row uses each "
                  "paper's per-dataset/per-shot defaults.")
#: ``--cols params``: heads as rows, a "Trainable params" column, then one accuracy column per shot count
PARAMS = "params"
PARAMS_HEADER = "Trainable params"
UNKNOWN_PARAMS = "?"
UNKNOWN_PARAMS_NOTE = ("? trainable params unknown: rows written before featbench recorded trainable_params, or a "
                       "head that does not report it.")
#: how heads are named: "paper" (each paper's name: TaskRes, Tip-Adapter-F) or "registry" (taskres, tip-adapter-f)
NAMES = ("paper", "registry")
REQUIRED_KEYS = ("dataset", "head", "shots", "seed", "protocol")
MAX_DECIMALS = 10

#: CoOp's dataset order (then the ImageNet shift sets); unknown datasets follow alphabetically.
DATASET_ORDER = (
    "imagenet", "caltech101", "oxford_pets", "oxfordpets", "stanford_cars", "stanfordcars", "oxford_flowers",
    "flowers102", "food101", "fgvc_aircraft", "fgvcaircraft", "sun397", "dtd", "eurosat", "ucf101",
    "imagenetv2", "imagenet_sketch", "imagenet-sketch", "imagenet_a", "imagenet-a", "imagenet_r", "imagenet-r",
)
METRIC_NAMES = {"acc": "Top-1 accuracy (%)", "mean_per_class_recall": "Mean per-class recall (%)"}


# -- the Table object ---------------------------------------------------------------------------------------
@dataclass
class Table:
    """An aggregated table: parallel DataFrames of means, stds, seed counts and oracle flags.

    ``mean``/``std``/``n``/``oracle`` share one index (row labels, or (block, row) pairs when ``block_dim`` is
    set) and one set of columns. ``rank`` (a Series or None) exists when heads are the rows.
    """

    mean: object
    std: object
    n: object
    oracle: object
    rows: str
    cols: str
    block_dim: str | None
    metric: str
    protocol: str | None
    rank: object = None
    notes: list[str] = field(default_factory=list)
    fallback: object = None  # like ``oracle``: cells built on a fallback (base-to-new New/H from zero-shot)
    transductive: object = None  # like ``oracle``: cells of heads that read the unlabeled test set
    overrides: bool = False  # whether a row of the table runs with parameters the user set
    block_column: bool = False  # blocks as a leading column in every format (the base-to-new layout)
    published: object = None  # like ``mean``: the published number of each cell (NaN: none); None: not asked for
    published_source: object = None  # like ``mean``: the source of each published number ("" where none)
    params: object = None  # ``--cols params``: a frame on ``mean``'s index: low, high (NaN: none), unknown (bool)

    @property
    def any_unknown_params(self) -> bool:
        return self.params is not None and bool(self.params["unknown"].any())
    spread: str = "std"  # what ``std`` holds: "std" (population std) or "ci" (95% t half-width, :func:`with_ci`)

    @property
    def any_oracle(self) -> bool:
        return bool(self.oracle.to_numpy().any())

    @property
    def any_fallback(self) -> bool:
        return self.fallback is not None and bool(self.fallback.to_numpy().any())

    @property
    def any_transductive(self) -> bool:
        return self.transductive is not None and bool(self.transductive.to_numpy().any())

    def flagged(self):
        """Cells that are never bold or ranked: built on test-set selection, a fallback or the test images."""
        out = self.oracle
        for mask in (self.fallback, self.transductive):
            if mask is not None:
                out = out | mask
        return out

    def uniform_seeds(self) -> int | None:
        """The seed count when every present cell has the same one (then shown once, in a note)."""
        vals = {int(v) for v in self.n.to_numpy().ravel() if v == v and v > 0}
        return vals.pop() if len(vals) == 1 else None


def format_count(n: float) -> str:
    """A parameter count as papers print it: 0, 512, 8.2K, 1.0M, 2.1B (one decimal from a thousand on)."""
    n = float(n)
    if round(n) < 1000:
        return str(int(round(n)))
    for unit, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "B")):
        if round(n / unit, 1) < 1000 or suffix == "B":
            return f"{n / unit:.1f}{suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_count_range(low: float, high: float) -> str:
    """One count, or ``low–high`` where the counts differ at the printed precision (NaN: unknown, "?")."""
    if low != low or high != high:
        return UNKNOWN_PARAMS
    a, b = format_count(low), format_count(high)
    return a if a == b else f"{a}–{b}"


#: the note under a ``--ci`` table that has a cell of one seed
ONE_SEED_NOTE = "A cell of one seed shows its mean alone: one seed gives no confidence interval."


def with_ci(table: Table) -> Table:
    """The table with each std replaced by the half-width of the 95% t interval of the mean over its n seeds
    (sample std, ddof=1; t with n - 1 df); cells of one seed keep the mean alone, with a note."""
    from dataclasses import replace

    from featbench.stats import t_half_width

    half = table.std.copy()
    half.loc[:, :] = t_half_width(table.std.to_numpy(dtype=float), table.n.to_numpy(dtype=float), ddof=0)
    notes = list(table.notes)
    present = table.mean.notna().to_numpy()
    if (present & (table.n.to_numpy(dtype=float) == 1)).any():
        notes.append(ONE_SEED_NOTE)
    return replace(table, std=half, spread="ci", notes=notes)


def check_names(names: str) -> str:
    if names not in NAMES:
        raise FeatbenchError(f"--names must be one of {', '.join(NAMES)}; got {names!r}")
    return names


def display_name(head: str, names: str = "paper") -> str:
    """The name tables and plots show for a head: the ``display_name`` it declares (``names="paper"``; read
    from its source, no torch) or the registry's; a head without one, or no longer installed, keeps its name."""
    head = str(head)
    if names == "registry" or head not in registry:
        return head
    return declared_display_name(registry.target(head)) or head


# -- orders ---------------------------------------------------------------------------------------------------
def order_datasets(names: Iterable[str]) -> list[str]:
    """Dataset labels in CoOp's order (then the ImageNet shifts), unknown ones alphabetically after."""
    rank = {n: i for i, n in enumerate(DATASET_ORDER)}
    return sorted(set(names), key=lambda n: (rank.get(n.split(" (from ")[0].lower(), len(rank)), n))


def order_heads(df) -> list[str]:
    """Head labels in registry order, each head's plain label before its variants."""
    try:
        from featbench.heads import list_heads

        registry = {h: i for i, h in enumerate(list_heads())}
    except Exception:  # pragma: no cover - the registry is light, but tables must not depend on it
        registry = {}
    pairs = df[["head", "head_label"]].drop_duplicates()
    keyed = sorted(
        ((registry.get(h, len(registry)), h, lab) for h, lab in zip(pairs["head"], pairs["head_label"])),
        key=lambda t: (t[0], t[1], t[2] != t[1], t[2]),
    )
    return [lab for _, _, lab in keyed]
