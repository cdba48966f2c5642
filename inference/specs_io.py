"""Edit one model's entry in ``assets/models.yaml`` and leave the others as they were.

``ruamel.yaml`` is not a dependency, so comments cannot round-trip through a YAML library.
Instead the file is loaded with ``yaml.safe_load``, the entry is deep-merged with the update
and dumped on its own (``sort_keys=False``; small mappings such as classes, input and
weights stay on one line each, as in the hand-written file), and that text replaces only
the entry's own lines. Every other line (header, other entries and their comments) is kept
byte for byte. Only when the entry cannot be located in the text is the whole file dumped,
keeping its header comment. The result is re-parsed and validated before it replaces the
file atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from inference.registry import ModelSpec

__all__ = ["deep_merge", "dump_registry", "load_registry_dict", "update_model_entry"]

_ENTRY_START = re.compile(r"""^(?P<indent> *)- id: *['"]?(?P<id>[A-Za-z0-9_-]+)['"]? *(#.*)?$""")

_FLOW_KEYS = frozenset({"input", "weights"})


class _Flow(dict[str, Any]):
    """A mapping dumped in flow style (``{a: 1, b: 2}``)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents lists under their key, like the hand-written registry."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


_NEEDS_QUOTES = (": ", " #", "'", '"')


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    analysis = dumper.analyze_scalar(data)
    needs_quotes = not (analysis.allow_flow_plain and analysis.allow_block_plain)
    if needs_quotes or any(s in data for s in _NEEDS_QUOTES) or data[:1] in "!&*{}[],#|>@`%?-" or data[:1].isdigit():
        # double quotes, as the hand-written file uses, rather than PyYAML's single quotes
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(_Flow, _represent_flow)
_Dumper.add_representer(str, _represent_str)


def _header(text: str) -> str:
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or (not line.strip() and lines):
            lines.append(line)
        else:
            break
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def _styled(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _FLOW_KEYS and isinstance(value, dict):
            out[key] = _Flow(value)
        elif key == "classes" and isinstance(value, list):
            out[key] = [_Flow(c) if isinstance(c, dict) else c for c in value]
        else:
            out[key] = value
    return out


def deep_merge(base: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``updates`` merged in: nested mappings merge, the rest replaces."""
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_registry_dict(path: Path) -> dict[str, Any]:
    """The registry file as plain Python data."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    data.setdefault("models", [])
    return data


def dump_registry(data: Mapping[str, Any], header: str = "") -> str:
    """YAML text of a registry dict, in the registry's house style."""
    styled = dict(data)
    styled["models"] = [_styled(m) for m in data.get("models", [])]
    body = yaml.dump(styled, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)
    # a blank line between model entries, as in the hand-written file
    body = body.replace("\n  - id: ", "\n\n  - id: ").replace("models:\n\n", "models:\n")
    return header + body


def _entry_span(lines: list[str], model_id: str) -> tuple[int, int, str] | None:
    """``(first line, end line, indent)`` of the list item ``- id: model_id``, or None.

    The item runs until the next item of the same list or a line indented less; blank and
    comment lines just before that belong to what follows and are left out of the span.
    """
    start = indent = None
    for i, line in enumerate(lines):
        m = _ENTRY_START.match(line)
        if m and m.group("id") == model_id:
            start, indent = i, m.group("indent")
            break
    if start is None or indent is None:
        return None
    end = len(lines)
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if not stripped or stripped.startswith("#"):
            continue
        lead = len(lines[j]) - len(lines[j].lstrip(" "))
        if lead < len(indent) + 2:
            end = j
            break
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].strip().startswith("#")):
        end -= 1
    return start, end, indent


def _dump_entry(entry: dict[str, Any], indent: str) -> list[str]:
    text = yaml.dump(
        [_styled(entry)], Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False
    )
    return [indent + line if line else line for line in text.splitlines()]


def update_model_entry(path: Path, model_id: str, updates: Mapping[str, Any]) -> ModelSpec:
    """Deep-merge ``updates`` into the entry ``model_id`` of the registry at ``path``.

    Only that entry's lines change; the header, the other entries and their comments are
    kept as they are. The merged entry is validated first, so a bad update never reaches the
    file. Returns the new spec.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = load_registry_dict(path)
    models: list[dict[str, Any]] = data["models"]
    for i, entry in enumerate(models):
        if entry.get("id") == model_id:
            merged = deep_merge(entry, updates)
            spec = ModelSpec.model_validate(merged)
            models[i] = merged
            break
    else:
        raise KeyError(f"model {model_id!r} is not in {path}")
    lines = text.splitlines()
    span = _entry_span(lines, model_id)
    out = None
    if span is not None:
        first, end, indent = span
        candidate = "\n".join([*lines[:first], *_dump_entry(merged, indent), *lines[end:]]) + "\n"
        try:
            if yaml.safe_load(candidate) == data:
                out = candidate
        except yaml.YAMLError:
            out = None
    if out is None:  # could not splice safely: dump the whole file, keeping the header
        out = dump_registry(data, _header(text))
    fd, tmp = tempfile.mkstemp(prefix=".models.", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return spec
