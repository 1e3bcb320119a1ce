"""Safe YAML loading for recipes, --set values and template files: PyYAML's safe loader with the traps closed.

Duplicated keys (PyYAML silently keeps the last), alias bombs ("billion laughs") and absurd flow nesting
(PyYAML's scanner is quadratic in it) each become one FeatbenchError line naming the input.
"""

from __future__ import annotations

from featbench.errors import FeatbenchError, short_repr

#: most values a YAML document may expand to through anchors and aliases (&a ... *a): a recipe has a few
#: hundred; a 343-byte "billion laughs" recipe expands to billions (it reached 2.35 GB and a 600 MB error line)
MAX_YAML_VALUES = 100_000


def _expanded_size(node, limit: int) -> int:
    """How many values the node graph expands to (aliases counted each time they are used), up to `limit`."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        n, done = stack.pop()
        key = id(n)
        if done:
            active.discard(key)
            if isinstance(n, yaml.SequenceNode):
                kids = n.value
            elif isinstance(n, yaml.MappingNode):
                kids = [x for kv in n.value for x in kv]
            else:
                kids = []
            total = 1 + sum(sizes[id(k)] for k in kids)
            sizes[key] = min(total, limit + 1)
            continue
        if key in sizes:
            continue
        if key in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the collection that contains it "
                                              "(recursive anchor)", n.start_mark)
        active.add(key)
        stack.append((n, True))
        if isinstance(n, yaml.SequenceNode):
            stack.extend((k, False) for k in n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend((x, False) for kv in n.value for x in kv)
    return sizes[id(node)]


def _yaml_loader(max_values: int = MAX_YAML_VALUES):
    """A SafeLoader that refuses duplicated keys and documents that expand past `max_values` values."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicated keys (PyYAML would silently keep the last) and alias bombs."""

        def compose_document(self):
            node = super().compose_document()
            if node is not None and _expanded_size(node, max_values) > max_values:
                raise yaml.composer.ComposerError(
                    None, None, f"the document expands to more than {max_values} values through anchors and "
                    "aliases (&name / *name); write the values out instead", node.start_mark)
            return node

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key (a list or mapping used as a key)
                raise yaml.constructor.ConstructorError(None, None, "a list or mapping used as a key",
                                                        key_node.start_mark) from None
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicated key {short_repr(key)}", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


MAX_YAML_DEPTH = 100


def _flow_depth(text: str) -> int:
    """Deepest [ / { nesting (quotes ignored: an over-estimate at worst). PyYAML's scanner is quadratic in it."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return deepest


def safe_yaml_load(text: str, what: str):
    """yaml.safe_load with duplicate keys, alias bombs and absurd nesting refused: one FeatbenchError line."""
    import yaml

    if ("[" in text or "{" in text) and _flow_depth(text) > MAX_YAML_DEPTH:
        raise FeatbenchError(f"{what}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}"
        problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise FeatbenchError(f"{what}: not valid YAML{where}: {short_repr(problem, 300, plain=True)}") from None
    except RecursionError:
        raise FeatbenchError(f"{what}: YAML nested too deeply") from None
