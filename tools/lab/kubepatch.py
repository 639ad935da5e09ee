"""Patch and selector semantics of the Kubernetes API, for the fake API server (pure, no I/O).

- merge_patch: RFC 7386 (application/merge-patch+json): objects merge key by key, null deletes,
  anything else (lists included) replaces.
- strategic_merge_patch: application/strategic-merge-patch+json as the API server applies it to
  built-in kinds, for the fields our objects use: lists of objects with a known merge key
  (containers by name, service ports by port, volumeMounts by mountPath...) merge item by item,
  `$patch: delete` / `$patch: replace` directives are honoured, `$setElementOrder/` and
  `$retainKeys` are accepted and ignored (they only order or prune), every other list replaces
  (as for the kinds' atomic lists, e.g. EndpointSlice endpoints).
- json_patch: RFC 6902 (application/json-patch+json): add, remove, replace, move, copy, test.
- label selectors: equality (=, ==, !=), existence (k, !k) and set-based (in, notin), the
  grammar of k8s.io/apimachinery/pkg/labels; field selectors on metadata.name/namespace.
Invalid input raises PatchError / SelectorError with a message the server turns into a Status.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

JSON = Any


class PatchError(ValueError):
    """A patch that cannot be applied (the API server answers 422 or 400)."""


class SelectorError(ValueError):
    """A label or field selector that does not parse (400)."""


def merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Merge keys of the list fields our manifests and objects use (from the Kubernetes API's
# x-kubernetes-patch-merge-key markers). "ports" depends on where it sits: container ports merge
# by containerPort, service ports by port.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}


def _merge_key(field: str, items: list[JSON]) -> str | None:
    if field == "ports":
        if any(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        return "port"
    return _MERGE_KEYS.get(field)


def strategic_merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(field: str, current: JSON, patch: list[JSON]) -> list[JSON]:
    key = _merge_key(field, patch + (current if isinstance(current, list) else []))
    if key is None or not isinstance(current, list):
        return [_strip_directives(i) for i in patch if not _is_delete(i)]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip_directives(i) for i in patch if i.get("$patch") != "replace"]
    merged = [copy.deepcopy(i) for i in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"list {field} items need the merge key {key!r}")
        index = next((n for n, m in enumerate(merged)
                      if isinstance(m, dict) and m.get(key) == item[key]), None)
        if _is_delete(item):
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(_strip_directives(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _is_delete(item: JSON) -> bool:
    return isinstance(item, dict) and item.get("$patch") == "delete"


def _strip_directives(item: JSON) -> JSON:
    return strategic_merge_patch({}, item) if isinstance(item, dict) else copy.deepcopy(item)


def json_patch(target: JSON, operations: JSON) -> JSON:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        document = _apply_operation(document, operation)
    return document


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(document: JSON, parts: list[str]) -> JSON:
    node = document
    for part in parts[:-1]:
        node = _child(node, part)
    return node


def _child(node: JSON, part: str) -> JSON:
    try:
        if isinstance(node, list):
            return node[int(part)]
        return node[part]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise PatchError(f"path element {part!r} does not exist") from exc


def _get(document: JSON, path: str) -> JSON:
    node = document
    for part in _pointer(path):
        node = _child(node, part)
    return node


def _add(document: JSON, path: str, value: JSON) -> JSON:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(document, parts), parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else _index(last, len(parent) + 1)
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add below a scalar at {path!r}")
    return document


def _remove(document: JSON, path: str) -> JSON:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(document, parts), parts[-1]
    if isinstance(parent, list):
        parent.pop(_index(last, len(parent)))
    elif isinstance(parent, dict) and last in parent:
        del parent[last]
    else:
        raise PatchError(f"nothing to remove at {path!r}")
    return document


def _index(text: str, bound: int) -> int:
    if not text.isdigit() or int(text) >= bound:
        raise PatchError(f"list index {text!r} out of range")
    return int(text)


def _apply_operation(document: JSON, operation: JSON) -> JSON:
    if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
        raise PatchError(f"malformed JSON patch operation: {operation!r}")
    op, path = operation["op"], operation["path"]
    handlers: dict[str, Callable[[], JSON]] = {
        "add": lambda: _add(document, path, copy.deepcopy(operation.get("value"))),
        "remove": lambda: _remove(document, path),
        "replace": lambda: _add(_remove(document, path), path, copy.deepcopy(
            operation.get("value"))) if _pointer(path) else copy.deepcopy(operation.get("value")),
        "move": lambda: _move(document, operation, path),
        "copy": lambda: _add(document, path, copy.deepcopy(_get(document, operation["from"]))),
        "test": lambda: _test(document, path, operation.get("value")),
    }
    if op not in handlers:
        raise PatchError(f"unknown JSON patch operation {op!r}")
    return handlers[op]()


def _move(document: JSON, operation: JSON, path: str) -> JSON:
    value = _get(document, operation["from"])
    return _add(_remove(document, operation["from"]), path, value)


def _test(document: JSON, path: str, value: JSON) -> JSON:
    if _get(document, path) != value:
        raise PatchError(f"test operation failed at {path!r}")
    return document


# -- selectors ---------------------------------------------------------------------------------

Requirement = Callable[[dict[str, str]], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|=|!=)\s*"
                     r"([A-Za-z0-9_.-]*))?\s*$")


def _split_requirements(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse_label_selector(selector: str) -> list[Requirement]:
    """The requirements of a labelSelector query parameter; every one must hold."""
    return [_requirement(text) for text in _split_requirements(selector)]


def _requirement(text: str) -> Requirement:
    match = _SET_RE.match(text)
    if match is None:
        raise SelectorError(f"unable to parse requirement: {text.strip()!r}")
    negate, key, set_op, values, op, value = match.groups()
    if negate and (set_op or op):
        raise SelectorError(f"unable to parse requirement: {text.strip()!r}")
    if negate:
        return lambda labels: key not in labels
    if set_op:
        allowed = {v.strip() for v in values.split(",") if v.strip()}
        if set_op == "in":
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    return lambda labels: key in labels


def parse_field_selector(selector: str) -> list[Callable[[JSON], bool]]:
    """metadata.name and metadata.namespace with =, == or != (what clients send for objects)."""
    checks = []
    for text in _split_requirements(selector):
        match = re.match(r"^\s*(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*(.*?)\s*$",
                         text)
        if match is None:
            raise SelectorError(f"field label not supported: {text.strip()!r}")
        field, op, value = match.groups()
        checks.append(_field_check(field.split(".")[1], op == "!=", value))
    return checks


def _field_check(field: str, negate: bool, value: str) -> Callable[[JSON], bool]:
    return lambda obj: (obj.get("metadata", {}).get(field, "") == value) != negate
