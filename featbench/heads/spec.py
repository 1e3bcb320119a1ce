"""Typed, bounded hyperparameters: what every head declares so bad values die at the boundary.

A head lists its hyperparameters in ``Head.hyperparams`` as ``{name: Param(...)}``. ``--set``, ``--grid``,
recipes and ``get_head`` all pass values through ``Param.check``, so ``alpha=nan``, ``epochs=-5`` or
``batch_size="x"`` become one clear line naming the head and parameter instead of a plausible-looking row.
``featbench heads NAME`` prints the same declarations.

Built-in heads declare every ``__init__`` parameter (tests/test_bad_inputs.py enforces it). Declarations are
optional for plugin heads: an undeclared parameter passes ``check_params`` as given and is still recorded in
result rows (``Head.hyperparameters``). ``featbench.testing.check_head`` checks that each declaration accepts
the head's default and that ``set_params`` refuses a value outside it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from featbench.errors import FeatbenchError, short_repr

_KINDS = ("float", "int", "bool", "str", "floats", "ints", "any")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its kind, bounds and meaning.

    kind     float | int | bool | str | floats (a list/tuple of floats) | ints | any (checked by the head)
    low/high inclusive bounds for numbers (each element for floats/ints); ``low_open``/``high_open`` make
             the bound exclusive (``lr`` > 0, not >= 0)
    choices  allowed values for ``str``
    none_ok  None is a valid value (e.g. "use the paper default" or "search it")
    length   required length for floats/ints
    inf_ok   +/-inf is a meaningful float value (CLAP's lambda_scale=inf freezes the prototypes); NaN never is
    doc      one line for ``featbench heads NAME``
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    none_ok: bool = False
    length: int | None = None
    inf_ok: bool = False
    doc: str = ""

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Param kind {self.kind!r} not in {_KINDS}")

    # -- describing ----------------------------------------------------------------------------------
    def describe(self) -> str:
        """'float in (0, inf)', 'int >= 1', "str in {'text', 'none'}", ... for help output."""
        kind = self.kind
        if self.choices is not None:
            text = f"{kind} in {{{', '.join(repr(c) for c in self.choices)}}}"
        elif self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else _num(self.low)
            hi = "inf" if self.high is None else _num(self.high)
            lb = "(" if (self.low_open or self.low is None) else "["
            rb = ")" if (self.high_open or self.high is None) else "]"
            text = f"{kind} in {lb}{lo}, {hi}{rb}"
        else:
            text = kind
        if self.length is not None:
            text += f" (length {self.length})"
        if self.inf_ok:
            text += " or inf"
        if self.none_ok:
            text += " or null"
        return text

    # -- checking ------------------------------------------------------------------------------------
    def check(self, head: str, name: str, value: Any) -> Any:
        """The value, coerced to its kind (1 -> 1.0 for floats), or a FeatbenchError naming head.name."""
        where = f"{head}.{name}"
        if value is None:
            if self.none_ok or self.kind == "any":
                return None
            raise FeatbenchError(f"{where}=null: expects {self.describe()}")
        if self.kind == "any":
            return value
        if self.kind in ("floats", "ints"):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise FeatbenchError(f"{where}={_short(value)}: expects a list of {self.describe()}")
            items = list(value)
            if not items:
                raise FeatbenchError(f"{where}=[]: expects at least one value ({self.describe()})")
            if self.length is not None and len(items) != self.length:
                raise FeatbenchError(f"{where}={_short(value)}: expects {self.length} values ({self.describe()})")
            scalar = "float" if self.kind == "floats" else "int"
            return tuple(self._scalar(where, scalar, v) for v in items)
        return self._scalar(where, self.kind, value)

    def _scalar(self, where: str, kind: str, value: Any) -> Any:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise FeatbenchError(f"{where}={_short(value)}: expects true or false")
        if kind == "str":
            if not isinstance(value, str):
                raise FeatbenchError(f"{where}={_short(value)}: expects {self.describe()}")
            if self.choices is not None and value not in self.choices:
                raise FeatbenchError(f"{where}={_short(value)}: expects {self.describe()}")
            return value
        # numbers: bool is an int subclass in Python but never a valid number here
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        if isinstance(value, bool) or not _is_number(value):
            raise FeatbenchError(f"{where}={_short(value)}: expects {self.describe()}")
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():  # 2.5, nan, inf
                raise FeatbenchError(f"{where}={_short(value)}: expects a whole number ({self.describe()})")
            value = int(value)
        else:
            value = float(value)
            if math.isnan(value) or (math.isinf(value) and not self.inf_ok):
                raise FeatbenchError(f"{where}={_short(value)}: expects a finite number ({self.describe()})")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise FeatbenchError(f"{where}={_short(value)}: out of range, expects {self.describe()}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise FeatbenchError(f"{where}={_short(value)}: out of range, expects {self.describe()}")
        return value


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    item = getattr(value, "item", None)  # numpy scalars
    return callable(item) and getattr(value, "shape", None) == () and isinstance(item(), (int, float))


def _num(x: float) -> str:
    return f"{x:g}"


def _short(value: Any, limit: int = 60) -> str:
    return short_repr(value, limit)


# -- common declarations ------------------------------------------------------------------------------
def positive(kind: str = "float", doc: str = "", **kw) -> Param:
    """> 0 (learning rates, temperatures, batch sizes)."""
    return Param(kind, low=0, low_open=True, doc=doc, **kw) if kind == "float" else Param(kind, low=1, doc=doc, **kw)


def nonnegative(kind: str = "float", doc: str = "", **kw) -> Param:
    """>= 0 (weight decay, epochs, mixing weights)."""
    return Param(kind, low=0, doc=doc, **kw)


#: the two parameters the runner sets on every head that has them
DEVICE = Param("str", doc="cpu | cuda | cuda:N | auto (set by --device)")
SEED = Param("int", doc="set by --seeds")


def check_params(head_cls, params: dict) -> dict:
    """Check every value against ``head_cls.hyperparams``; returns coerced values. Undeclared names pass."""
    specs = getattr(head_cls, "hyperparams", {}) or {}
    out = dict(params)
    for name, value in params.items():
        spec = specs.get(name)
        if spec is not None:
            out[name] = spec.check(head_cls.name or head_cls.__name__, name, value)
    return out


__all__ = ["Param", "positive", "nonnegative", "check_params", "DEVICE", "SEED"]
