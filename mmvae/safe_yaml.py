"""YAML for configs and overrides, with limits: no alias bombs, no recursive aliases, no duplicate keys.

`yaml.safe_load` builds aliases as shared references, so a 1 kB file of nested aliases ("billion laughs")
loads instantly but expands to billions of values as soon as anything walks it (validation, the error
formatter's repr); a recursive alias (`a: &a [*a]`) builds a cyclic structure. PyYAML also keeps the last
of two equal mapping keys without a word, so a second `model:` section silently replaces the first.

:func:`load` refuses all of these before anything expands the document, with a one-line message that
names the line. Limits (generous for hand-written configs; the shipped ones use a few hundred values):
`MAX_VALUES` values after expanding aliases, `MAX_DEPTH` levels of nesting, `MAX_CHARS` characters of text.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_VALUES = 20_000
MAX_DEPTH = 64
MAX_CHARS = 1_000_000


class YamlLimitError(ValueError):
    """A YAML text exceeds a limit or is ambiguous (duplicate key); the message names the line."""


def _line(mark) -> str:
    return f"line {mark.line + 1}" if mark is not None else "unknown line"


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that tracks nesting depth and anchors being composed, and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open_anchors:
                raise YamlLimitError(f"{_line(event.start_mark)}: alias *{event.anchor} refers to a value that "
                                     "contains it (a recursive structure); aliases must point to finished values")
            return super().compose_node(parent, index)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlLimitError(f"{_line(event.start_mark)}: nested more than {MAX_DEPTH} levels deep")
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            total = _expanded_size(node)
            if total > MAX_VALUES:
                raise YamlLimitError(f"the document expands to {_count(total)} values through its aliases "
                                     f"(limit {MAX_VALUES:,}); refusing an alias bomb")
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges are explicit overrides, not duplicates
                if not isinstance(key_node, ScalarNode):
                    continue  # complex keys: left to the constructor (and to the config's validation)
                key = self.construct_object(key_node)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue
                if first is not None:
                    raise YamlLimitError(f"{_line(key_node.start_mark)}: duplicate key {short_repr(key, 40)} "
                                         f"(first at {_line(first.start_mark)}); each key may appear once per section")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Number of values the node graph has once every alias is expanded (memoised: linear in distinct nodes)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**12 else f"about 10^{len(str(n)) - 1}"


def load(text: str) -> Any:
    """Parse one YAML document with the limits above; raises YamlLimitError or yaml.YAMLError."""
    if len(text) > MAX_CHARS:
        raise YamlLimitError(f"{len(text):,} characters of YAML (limit {MAX_CHARS:,})")
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    except (yaml.YAMLError, YamlLimitError):
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise YamlLimitError(f"a value cannot be read: {short_repr(str(exc), 120, quote=False)}") from None
    finally:
        loader.dispose()


def describe_error(exc: yaml.YAMLError) -> str:
    """One line for a PyYAML error: 'line L, column C: problem (context)', without the echoed source text."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return short_repr(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200, quote=False)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    text = where + problem + (f" ({context})" if context else "")
    return short_repr(text, 200, quote=False)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def short_repr(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A repr of at most ~`limit` characters that never walks more than a few levels of `value`."""
    text = _REPR.repr(value) if quote else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
