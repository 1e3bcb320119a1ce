"""User prompt templates and class-name overrides for `extract --templates FILE --classnames FILE`.

Templates: a text file with one template per line (blank lines and lines starting with ``#`` skipped), or a
YAML/JSON list of strings. Each template holds exactly one ``{}`` where the class name goes.
Class names: a text file with one name per line, in label order (as many lines as the dataset has classes), or
a JSON/YAML mapping ``{class folder or id: name}`` that renames the classes it names and keeps the others.

Both are recorded in the cache (the templates as ``/text`` attrs and in the fingerprint's preprocessing record,
overridden class names as a hash in the same record), so caches with other prompts are never mixed up.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Sequence

from featbench.errors import FeatbenchError, short_repr

MAX_FILE_BYTES = 4 << 20  # prompt files are small; refuse anything that is clearly not one


def _read_text(path: str | Path, flag: str) -> tuple[Path, str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FeatbenchError(f"{flag} {path}: file not found (or not a regular file)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FeatbenchError(f"{flag} {path}: larger than {MAX_FILE_BYTES >> 20} MB; is this the right file?")
    try:
        return path, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FeatbenchError(f"{flag} {path}: cannot read it as UTF-8 text ({err.__class__.__name__})") from None


def _structured(path: Path, text: str, flag: str):
    """The parsed JSON/YAML value of a .json/.yaml/.yml file, else None (a plain one-per-line file)."""
    if path.suffix.lower() == ".json":
        import json

        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise FeatbenchError(f"{flag} {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise FeatbenchError(f"{flag} {path}: not valid YAML ({str(err).splitlines()[0][:200]})") from None
    return None


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((i, s))
    return out


def check_template(t, where: str) -> str:
    if not isinstance(t, str):
        raise FeatbenchError(f"{where}: a template must be a string, got {type(t).__name__}")
    if t.count("{}") != 1:
        raise FeatbenchError(f"{where}: template {t[:80]!r} must contain exactly one '{{}}' for the class name "
                             f"(it has {t.count('{}')}), e.g. 'a photo of a {{}}.'")
    return t


def read_templates(path: str | Path) -> list[str]:
    """Templates from a file (see the module docstring), validated."""
    flag = "--templates"
    path, text = _read_text(path, flag)
    data = _structured(path, text, flag)
    if data is not None:
        if not isinstance(data, list):
            raise FeatbenchError(f"{flag} {path}: expected a list of templates, got {type(data).__name__}")
        out = [check_template(t, f"{flag} {path} item {i + 1}") for i, t in enumerate(data)]
    else:
        out = [check_template(t, f"{flag} {path}:{i}") for i, t in _lines(text)]
    if not out:
        raise FeatbenchError(f"{flag} {path}: no templates; write one per line, e.g. 'a photo of a {{}}.'")
    if len(set(out)) != len(out):
        dup = next(t for t in out if out.count(t) > 1)
        raise FeatbenchError(f"{flag} {path}: template {dup!r} is listed twice")
    return out


def read_classnames(path: str | Path, classnames: Sequence[str], class_ids: Sequence[str]) -> list[str]:
    """The dataset's class names with the file's overrides applied (see the module docstring)."""
    flag = "--classnames"
    path, text = _read_text(path, flag)
    data = _structured(path, text, flag)
    n = len(classnames)
    if data is None:
        lines = _lines(text)
        data = [name for _, name in lines]
    if isinstance(data, list):
        if len(data) != n:
            raise FeatbenchError(f"{flag} {path}: {len(data)} names for {n} classes; give one name per class, "
                                 "in label order (or a JSON mapping folder -> name)")
        out = [check_classname(v, f"{flag} {path} item {i + 1}") for i, v in enumerate(data)]
    elif isinstance(data, dict):
        ids = [str(c) for c in class_ids] if class_ids else [str(i) for i in range(n)]
        index = {c: i for i, c in enumerate(ids)}
        unknown = [str(k) for k in data if str(k) not in index]
        if unknown:
            raise FeatbenchError(f"{flag} {path}: unknown class {unknown[0]!r}; keys must be the dataset's class "
                                 f"folders/ids, e.g. {', '.join(ids[:3])}")
        out = list(classnames)
        for k, v in data.items():
            out[index[str(k)]] = check_classname(v, f"{flag} {path} key {k!r}")
    else:
        raise FeatbenchError(f"{flag} {path}: expected a list of names or a mapping folder -> name")
    if len(set(out)) != len(out):
        dup = next(c for c in out if out.count(c) > 1)
        raise FeatbenchError(f"{flag} {path}: two classes would both be named {dup!r}; class names must differ")
    return out


def check_classname(v, where: str) -> str:
    """``v`` stripped, or one line naming ``where``: a class name is a non-empty one-line string without NUL or
    other control characters (HDF5 strings end at a NUL, and the tokenizer would see something else)."""
    if not isinstance(v, str) or not v.strip():
        raise FeatbenchError(f"{where}: a class name must be a non-empty one-line string, got {short_repr(v)}")
    bad = next((c for c in v if unicodedata.category(c) == "Cc" and c != "\t"), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else ("a line break" if bad in "\r\n" else f"control character {bad!r}")
        raise FeatbenchError(f"{where}: class name {short_repr(v)} contains {what}; "
                             "a class name must be a one-line string of printable characters")
    return v.strip()


__all__ = ["read_templates", "read_classnames", "check_template", "check_classname"]
