"""YAML for option files, run configs and ``--aug`` values: PyYAML's safe loader without anchors, aliases or
duplicate keys, reading ``5e-1`` as a number.

Aliases let a few hundred bytes stand for billions of values ("billion laughs": each alias repeats the one before
ten times); whatever walks the result (validation, ``repr`` in an error, ``dataclasses.asdict``) then runs for
minutes and dies of memory. Option files are flat mappings that dali-train writes without aliases, so they are
refused rather than bounded. A key given twice is refused too: YAML keeps the last one silently, so the file says
two things and the run would take one.

PyYAML follows YAML 1.1, where a float needs a dot: ``5e-1`` would be the string "5e-1", accepted for some options
and refused for others depending on who converts it. YAML 1.2 (and every reader of the number) takes it as 0.5, and
so does this loader, wherever a value is read.
"""

from __future__ import annotations

from typing import Any

import re

import yaml


class YamlRefused(yaml.YAMLError):
    """Valid YAML that an option file may not hold; the message is one line."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        name = event.anchor if isinstance(event, yaml.AliasEvent) else getattr(event, "anchor", None)
        if name is not None:
            what = f"alias *{name}" if isinstance(event, yaml.AliasEvent) else f"anchor &{name}"
            raise YamlRefused(f"line {event.start_mark.line + 1}: YAML {what}: anchors and aliases are not accepted "
                              "(a few of them can expand to billions of values); write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise YamlRefused(f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's floats with an exponent and no dot (those with a dot are YAML 1.1 floats already)
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """The one document in `text` (None when empty), as ``yaml.safe_load`` reads it; raises :class:`YamlRefused`
    (a ``yaml.YAMLError``) for anchors, aliases and duplicate keys."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
