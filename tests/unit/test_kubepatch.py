"""The fake API server's patch and selector semantics (RFC 7386, RFC 6902, strategic merge)."""

from __future__ import annotations

import pytest

from lab import kubepatch

pytestmark = pytest.mark.unit


def test_merge_patch_merges_objects_deletes_nulls_and_replaces_lists() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}
    patched = kubepatch.merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3], "x": None})
    assert patched == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}  # the input is untouched


def test_strategic_merge_merges_containers_by_name_and_honours_delete() -> None:
    target = {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}],
                       "args": ["x"]}}
    patch = {"spec": {"containers": [{"name": "a", "image": "2"},
                                     {"name": "b", "$patch": "delete"},
                                     {"name": "c", "image": "3"}],
                      "args": ["y"], "$setElementOrder/containers": [{"name": "a"}]}}
    assert kubepatch.strategic_merge_patch(target, patch) == {"spec": {
        "containers": [{"name": "a", "image": "2"}, {"name": "c", "image": "3"}],
        "args": ["y"]}}


def test_strategic_merge_merges_service_ports_by_port() -> None:
    target = {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}
    patched = kubepatch.strategic_merge_patch(target, {"ports": [{"port": 80, "name": "web"}]})
    assert patched == {"ports": [{"port": 80, "name": "web"}, {"port": 443}]}


def test_json_patch_applies_every_operation_in_order() -> None:
    doc = {"a": [1, 2], "b": {"c": "d"}}
    ops = [{"op": "add", "path": "/a/-", "value": 3}, {"op": "remove", "path": "/a/0"},
           {"op": "replace", "path": "/b/c", "value": "e"}, {"op": "copy", "from": "/b",
                                                            "path": "/f"},
           {"op": "move", "from": "/f/c", "path": "/g"}, {"op": "test", "path": "/g",
                                                          "value": "e"},
           {"op": "add", "path": "/h~1i", "value": 1}]
    assert kubepatch.json_patch(doc, ops) == {"a": [2, 3], "b": {"c": "e"}, "f": {}, "g": "e",
                                              "h/i": 1}


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/a", "value": 2}],
    [{"op": "remove", "path": "/missing"}],
    [{"op": "replace", "path": "/a/b/c", "value": 1}],
    [{"op": "frobnicate", "path": "/a"}],
    {"op": "add"},
])
def test_json_patch_that_cannot_apply_raises(ops: object) -> None:
    with pytest.raises(kubepatch.PatchError):
        kubepatch.json_patch({"a": 1}, ops)


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app", {"app": ""}, True),
    ("!app", {"app": "x"}, False),
    ("tier in (a, b),app", {"tier": "b", "app": "x"}, True),
    ("tier notin (a,b)", {"tier": "a"}, False),
    ("", {}, True),
])
def test_label_selector_follows_the_apimachinery_grammar(
        selector: str, labels: dict[str, str], expected: bool) -> None:
    requirements = kubepatch.parse_label_selector(selector)
    assert all(r(labels) for r in requirements) is expected


def test_bad_selectors_are_rejected() -> None:
    with pytest.raises(kubepatch.SelectorError):
        kubepatch.parse_label_selector("app=web=x")
    with pytest.raises(kubepatch.SelectorError):
        kubepatch.parse_field_selector("spec.nodeName=x")
