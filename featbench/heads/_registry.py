"""One registry of heads: built-ins, plugins, ``package.module:Class`` strings and run-time additions.

Every head takes the same path, wherever it comes from: it is added under a name with a lazy target (a
"module:Class" string, an ``importlib.metadata.EntryPoint`` or the class itself), then imported and checked
on its first lookup. This follows lm-evaluation-harness's ``Registry`` (``lm_eval/api/registry.py``) for the
lazy targets and pluggy's ``PluginManager.load_setuptools_entrypoints`` for plugins:

- listing names imports no head module, so ``featbench heads`` and ``list_heads()`` need no torch, and a
  plugin's module is imported only when its head is looked up;
- a taken name is never given to another target, so a plugin cannot shadow a built-in (adding the same target
  again is a no-op: fit workers re-register the heads of the cells they run);
- every entry remembers where it came from (built-in, plugin with its distribution and version, a module path
  the user typed, ``register_head``), so listings and one-line errors can name the package to fix;
- a plugin refused while scanning (a taken name, a malformed target) is kept as a one-line problem instead of
  an exception, so one broken plugin never breaks the listing or the other heads.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Mapping, Union

from featbench.errors import FeatbenchError, short_repr

Target = Union[str, type, metadata.EntryPoint]

BUILT_IN = "built-in"
PLUGIN = "plugin"
MODULE_PATH = "module path"
RUN_TIME = "register_head"

_SPLIT_ON = (",", ".", ":", " ")  # --heads splits on ',', --set HEAD.PARAM on '.'; ':' marks a module path


@dataclass(frozen=True)
class Origin:
    """Where an entry came from: its kind (built-in, plugin, module path, register_head) and, for a plugin,
    the distribution that declares it ("name version")."""

    kind: str
    distribution: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.distribution}" if self.distribution else self.kind


@dataclass
class _Entry:
    target: Target
    origin: Origin
    loaded: type | None = None


class Registry:
    """Names -> classes deriving from ``base`` (a "module:Class" string, imported on the first lookup).

    ``group`` names the entry-point group whose plugins are added on first use, unless the environment
    variable ``disable_env`` is set to a non-empty value.
    """

    def __init__(self, kind: str, base: str, *, built_ins: Mapping[str, str] = (), group: str | None = None,
                 disable_env: str | None = None):
        self.kind, self.base, self.group, self.disable_env = kind, base, group, disable_env
        self._entries: dict[str, _Entry] = {}
        self._problems: dict[str, str] = {}
        self._scanned = group is None
        for name, target in dict(built_ins).items():
            self._insert(name, target, Origin(BUILT_IN))

    # -- adding ------------------------------------------------------------------------------------------------
    def add(self, name: str, target: Target, origin: Origin = Origin(RUN_TIME)) -> None:
        """Register ``target`` under ``name``: the same target again is a no-op, another target is refused."""
        self._autoload()
        self._insert(name, target, origin)

    def _insert(self, name: str, target: Target, origin: Origin) -> None:
        _check_name(name, target, origin, self.kind)
        _check_target(target, f"{self.kind} '{name}' ({origin})")
        current = self._entries.get(name)
        if current is None:
            self._entries[name] = _Entry(target, origin)
        elif not self._same_target(current, target, origin):
            raise FeatbenchError(f"{self.kind} '{name}' ({origin}, {spelling(target)}) cannot be registered: the name "
                                 f"is taken by the {current.origin} {self.kind} {spelling(current.target)}; "
                                 f"give yours another name")

    def _same_target(self, current: _Entry, target: Target, origin: Origin) -> bool:
        """Equal spellings; for a run-time addition also another spelling of the same class (a re-export)."""
        if spelling(current.target) == spelling(target):
            return True
        if origin.kind == PLUGIN:  # comparing would import the plugin while only listing names
            return False
        try:
            return _import(current.target) is _import(target)
        except Exception:  # either side does not import: not provably the same class
            return False

    def pop(self, name: str, default=None):
        """Remove ``name`` and return its target (tests unregister their heads with it)."""
        entry = self._entries.pop(name, None)
        return default if entry is None else entry.target

    # -- plugins -----------------------------------------------------------------------------------------------
    def _autoload(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        if self.disable_env and os.environ.get(self.disable_env):
            return
        for ep in metadata.entry_points(group=self.group):
            origin = Origin(PLUGIN, distribution_of(ep))
            try:
                self._insert(ep.name, ep, origin)
            except FeatbenchError as err:
                self._problems.setdefault(ep.name, f"{str(err)} (entry point group '{self.group}')")

    def forget_plugins(self) -> None:
        """Drop the plugins found so far; the next use scans the installed distributions again."""
        for name in [n for n, e in self._entries.items() if e.origin.kind == PLUGIN]:
            del self._entries[name]
        self._problems.clear()
        self._scanned = self.group is None
        importlib.invalidate_caches()  # also clears importlib.metadata's memo of each sys.path folder

    def problems(self) -> dict[str, str]:
        """Plugin name -> the one line saying why it was refused (a taken name, a malformed target)."""
        self._autoload()
        return dict(self._problems)

    # -- looking up --------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, built-ins first, without importing any of them."""
        self._autoload()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._autoload()
        return isinstance(name, str) and name in self._entries

    def origin(self, name: str) -> Origin:
        return self._entry(name).origin

    def target(self, name: str) -> str:
        """The entry's "module:Class", without importing it."""
        return spelling(self._entry(name).target)

    def get(self, name: str) -> type:
        """The class registered as ``name``, imported and checked on the first lookup."""
        entry = self._entry(name)
        if entry.loaded is None:
            entry.loaded = self._load(name, entry)
        return entry.loaded

    def _entry(self, name: str) -> _Entry:
        if name not in self:
            raise FeatbenchError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The error line for an unknown name, with the closest names as a suggestion."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=2)
        if close:
            hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        else:
            hint = "choose from: " + ", ".join(self._entries)
        return f"unknown {self.kind} '{short_repr(name, 80, plain=True)}'; {hint}"

    def _load(self, name: str, entry: _Entry) -> type:
        where = self.describe(name, entry)
        try:
            obj = _import(entry.target)
        except Exception as err:  # a plugin may raise anything while importing: one line, naming the plugin
            raise FeatbenchError(f"{where} could not be imported: {type(err).__name__}: {_first_line(err)}; "
                                 "install or fix the module that defines it") from None
        base = _import(self.base)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise FeatbenchError(f"{where} is {short_repr(obj)}, not a subclass of "
                                 f"{base.__module__}.{base.__qualname__}; derive the class from it")
        return obj

    def describe(self, name: str, entry: _Entry | None = None) -> str:
        """"head 'NAME' (ORIGIN, module:Class)": how errors name an entry and where it came from."""
        entry = entry or self._entry(name)
        text = spelling(entry.target)
        return f"{self.kind} '{name}' ({entry.origin})" if text == name else f"{self.kind} '{name}' ({entry.origin}, {text})"


# -- helpers ---------------------------------------------------------------------------------------------------
def spelling(target: Target) -> str:
    """A target as "module:Class" text, without importing it."""
    if isinstance(target, metadata.EntryPoint):
        return target.value
    if isinstance(target, type):
        return f"{target.__module__}:{target.__qualname__}"
    return str(target)


def distribution_of(ep: metadata.EntryPoint) -> str:
    """"name version" of the distribution that declares an entry point ("unknown distribution" if unsaid)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown distribution)"
    return f"{dist.metadata['Name']} {dist.version}"


def _check_name(name: str, target: Target, origin: Origin, kind: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise FeatbenchError(f"{kind} name {short_repr(name, 60)} ({origin}): give a non-empty string")
    if name == spelling(target):  # a module path registered under its own spelling
        return
    bad = [c for c in _SPLIT_ON if c in name]
    if bad:
        raise FeatbenchError(f"{kind} name '{name}' ({origin}) contains {' '.join(repr(c) for c in bad)}; --heads "
                             "and --set split on these characters: use letters, digits, '-', '_' or '+'")


def _check_target(target: Target, where: str) -> None:
    if isinstance(target, type):
        return
    if isinstance(target, metadata.EntryPoint):
        text = target.value
    elif isinstance(target, str):
        text = target
    else:
        raise FeatbenchError(f"{where}: target {short_repr(target)} is neither a class nor 'package.module:Class'")
    module, sep, attr = text.partition(":")
    if not (sep and module and attr) or any(c.isspace() for c in text):
        raise FeatbenchError(f"{where}: target '{short_repr(text, 80, plain=True)}' is not 'package.module:Class'")


def _import(target: Target):
    if isinstance(target, type):
        return target
    if isinstance(target, metadata.EntryPoint):
        return target.load()
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
