"""The pinned-BPF-map data plane against the real kernel, bpffs, libbcc and bpftool.

Each test gets its own pin directory under /sys/fs/bpf/gossip-agent-test/<uuid>/, removed in
teardown. Without bpffs, bcc or bpftool the tests skip locally and FAIL in CI (CI=true).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossip_agent import errors
from gossip_agent.core import diff, snapshots, versions
from gossip_agent.dataplane import base, bpfmap, layout
from gossip_agent.system import bpfsys
from tests.conftest import require_bpf

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
V1, V2 = versions.Version(1, 1), versions.Version(1, 2)


@pytest.fixture
def pin_dir(bpffs_dir: str) -> str:
    return bpffs_dir


@pytest.fixture
def plane(pin_dir: str) -> Iterator[bpfmap.BpfDataPlane]:
    opened = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=layout.DEFAULT_MAX_ENTRIES)
    yield opened
    opened.close()


def digest(table: dict[int, int]) -> bytes:
    return hashlib.sha256(repr(sorted(table.items())).encode()).digest()


def put(plane: bpfmap.BpfDataPlane, table: dict[int, int], version: versions.Version) -> None:
    plane.apply(diff.diff(plane.read(), table), version=version, content_hash=digest(table))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


def bpftool_json(*args: str) -> object:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"bpftool {' '.join(args)} failed: {out.stderr}"
    return json.loads(out.stdout)


def le_u32(hex_bytes: list[str]) -> int:
    return int.from_bytes(bytes(int(b, 16) for b in hex_bytes), sys.byteorder)


def bpftool_u32_table(path: str) -> dict[int, int]:
    """SERVICE_LIST as an independent reader (bpftool) sees it."""
    dump = bpftool_json("map", "dump", "pinned", path)
    assert isinstance(dump, list)
    return {le_u32(item["key"]): le_u32(item["value"]) for item in dump}


def bpftool(*args: str) -> None:
    out = subprocess.run(["bpftool", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"bpftool {' '.join(args)} failed: {out.stderr}"


def u32_words(value: int) -> list[str]:
    return [str(b) for b in value.to_bytes(4, sys.byteorder)]


def test_a_new_pin_dir_gets_both_maps_with_the_contract_layout(
    plane: bpfmap.BpfDataPlane, pin_dir: str
) -> None:
    table = bpftool_json("map", "show", "pinned", f"{pin_dir}/SERVICE_LIST")
    meta = bpftool_json("map", "show", "pinned", f"{pin_dir}/SERVICE_LIST_META")
    assert isinstance(table, dict) and isinstance(meta, dict)
    assert (table["type"], table["bytes_key"], table["bytes_value"], table["max_entries"]) == (
        "hash",
        4,
        4,
        1024,
    )
    assert (meta["type"], meta["bytes_key"], meta["bytes_value"], meta["max_entries"]) == (
        "array",
        4,
        56,
        1,
    )
    assert (plane.kind, plane.location) == ("bpf", f"{pin_dir}/SERVICE_LIST")
    assert plane.load() == base.Persisted(versions.ZERO, b"", {})


def test_applied_snapshot_is_seen_by_a_new_process_and_by_bpftool(
    plane: bpfmap.BpfDataPlane, pin_dir: str
) -> None:
    table = {0x0A60000A: 3, 0x0A600001: 0, 0xC0A80001: 7}
    put(plane, table, V1)
    plane.close()  # releases the pin directory for the other process

    child = run_python(
        "import json; from gossip_agent.dataplane import bpfmap\n"
        f"p = bpfmap.open_pinned(pin_dir={pin_dir!r}, max_entries=1024)\n"
        "s = p.load()\n"
        "print(json.dumps([s.version.term, s.version.seq, s.content_hash.hex(),"
        " sorted(s.table.items())]))\n"
    )
    assert child.returncode == 0, child.stderr
    term, seq, hash_hex, items = json.loads(child.stdout)
    assert versions.Version(term, seq) == V1
    assert bytes.fromhex(hash_hex) == digest(table)
    assert {key: value for key, value in items} == table
    assert bpftool_u32_table(f"{pin_dir}/SERVICE_LIST") == table


def test_existing_pin_with_entries_is_reused_and_never_emptied(pin_dir: str) -> None:
    os.makedirs(pin_dir)
    path = f"{pin_dir}/SERVICE_LIST"
    bpftool("map", "create", path, "type", "hash", "key", "4", "value", "4", "entries", "1024",
            "name", "SERVICE_LIST")  # fmt: skip
    bpftool("map", "update", "pinned", path, "key", *u32_words(0x0A000001), "value",
            *u32_words(5))  # fmt: skip

    plane = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    try:
        assert plane.load() == base.Persisted(versions.ZERO, b"", {0x0A000001: 5})
    finally:
        plane.close()
    reopened = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    try:
        assert reopened.read() == {0x0A000001: 5}
    finally:
        reopened.close()


def test_pin_with_other_max_entries_is_migrated_by_copying_its_entries(pin_dir: str) -> None:
    os.makedirs(pin_dir)
    path = f"{pin_dir}/SERVICE_LIST"
    bpftool("map", "create", path, "type", "hash", "key", "4", "value", "4", "entries", "512",
            "name", "SERVICE_LIST")  # fmt: skip
    old = {1: 2, 0x0A60000A: 0, 0xC0A80001: 7}
    for key, value in old.items():
        bpftool("map", "update", "pinned", path, "key", *u32_words(key), "value",
                *u32_words(value))  # fmt: skip

    plane = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    try:
        assert plane.read() == old
        shown = bpftool_json("map", "show", "pinned", path)
        assert isinstance(shown, dict) and shown["max_entries"] == 1024
        assert bpftool_u32_table(path) == old
        assert not [name for name in os.listdir(pin_dir) if name.endswith("_migrating")]
    finally:
        plane.close()


def test_migration_that_cannot_fit_is_refused_and_leaves_the_pin_in_place(pin_dir: str) -> None:
    os.makedirs(pin_dir)
    path = f"{pin_dir}/SERVICE_LIST"
    bpftool("map", "create", path, "type", "hash", "key", "4", "value", "4", "entries", "8",
            "name", "SERVICE_LIST")  # fmt: skip
    for key in range(3):
        bpftool("map", "update", "pinned", path, "key", *u32_words(key), "value",
                *u32_words(1))  # fmt: skip

    with pytest.raises(errors.DataPlaneError) as caught:
        bpfmap.open_pinned(pin_dir=pin_dir, max_entries=2)

    message = str(caught.value)
    assert path in message and "holds 3 entries" in message and "max_entries 2" in message
    assert bpftool_u32_table(path) == {0: 1, 1: 1, 2: 1}
    # The failed open released the directory: a matching configuration opens it.
    plane = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=8)
    plane.close()


def test_pin_with_other_value_size_is_refused_and_left_in_place(pin_dir: str) -> None:
    os.makedirs(pin_dir)
    path = f"{pin_dir}/SERVICE_LIST"
    bpftool("map", "create", path, "type", "hash", "key", "4", "value", "8", "entries", "1024",
            "name", "SERVICE_LIST")  # fmt: skip

    with pytest.raises(errors.DataPlaneError) as caught:
        bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)

    assert path in str(caught.value) and "no migration" in str(caught.value)
    shown = bpftool_json("map", "show", "pinned", path)
    assert isinstance(shown, dict) and shown["bytes_value"] == 8


def test_apply_deletes_and_updates_and_writes_meta_after(
    plane: bpfmap.BpfDataPlane, pin_dir: str
) -> None:
    put(plane, {1: 1, 2: 2, 3: 3}, V1)
    put(plane, {2: 5, 3: 3, 4: 4}, V2)

    assert plane.load() == base.Persisted(V2, digest({2: 5, 3: 3, 4: 4}), {2: 5, 3: 3, 4: 4})
    assert bpftool_u32_table(f"{pin_dir}/SERVICE_LIST") == {2: 5, 3: 3, 4: 4}


def test_deleting_a_key_already_gone_still_applies(plane: bpfmap.BpfDataPlane) -> None:
    put(plane, {1: 1, 2: 2, 3: 3}, V1)
    change = diff.diff({1: 1, 2: 2, 3: 3, 9: 9}, {3: 4})  # 9 was never there

    plane.apply(change, version=V2, content_hash=digest({3: 4}))

    assert plane.load() == base.Persisted(V2, digest({3: 4}), {3: 4})


def test_apply_of_1024_entries_fills_the_map(plane: bpfmap.BpfDataPlane, pin_dir: str) -> None:
    table = {0x0A000000 + i: i % 5 for i in range(1024)}
    put(plane, table, V1)

    assert plane.read() == table
    assert bpftool_u32_table(f"{pin_dir}/SERVICE_LIST") == table


def test_apply_beyond_max_entries_changes_neither_map_nor_meta(
    plane: bpfmap.BpfDataPlane,
) -> None:
    put(plane, {1: 1, 2: 2}, V1)
    before = plane.load()
    too_big = {key: 1 for key in range(100, 100 + 1025)}

    with pytest.raises(errors.DataPlaneError, match="at most 1024"):
        plane.apply(diff.diff(before.table, too_big), version=V2, content_hash=digest(too_big))

    assert plane.load() == before


def test_kernel_failure_mid_batch_restores_touched_keys(
    plane: bpfmap.BpfDataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = {key: 1 for key in range(1, 1001)}
    put(plane, start, V1)
    before = plane.load()
    # Without the capacity check the kernel itself stops the update batch (E2BIG) after
    # filling the map: deletes and a prefix of updates are really applied, then rolled back.
    monkeypatch.setattr(bpfmap, "_check_capacity", lambda *args, **kwargs: None)
    target = {key: 2 for key in range(11, 1101)}

    with pytest.raises(errors.DataPlaneError, match="were restored") as caught:
        plane.apply(diff.diff(start, target), version=V2, content_hash=digest(target))

    assert "E2BIG" in str(caught.value)
    assert plane.load() == before


def test_meta_write_failure_restores_the_table_and_keeps_meta(
    plane: bpfmap.BpfDataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(plane, {1: 1, 2: 2, 3: 3}, V1)
    before = plane.load()

    def refuse(key: bytes, value: bytes) -> None:
        raise bpfsys.BpfError("injected meta failure", errno=5)

    monkeypatch.setattr(plane._meta, "update", refuse)
    with pytest.raises(errors.DataPlaneError, match="injected meta failure"):
        put(plane, {2: 9, 4: 4}, V2)

    assert plane.load() == before


def stated(old: dict[int, int], new: dict[int, int]) -> diff.MapDiff:
    """The engine's kind of diff: between tables, stating what the touched keys held."""
    return diff.diff_tables(snapshots.encode_table(old), snapshots.encode_table(new))


def test_a_diff_that_states_what_it_replaces_is_applied_without_reading_the_map(
    plane: bpfmap.BpfDataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = {0x0A000000 + i: 1 for i in range(1024)}
    put(plane, start, V1)
    churned = {key: 2 for key in start}
    with monkeypatch.context() as patched:
        def no_read(*args: object) -> None:
            raise AssertionError("apply read the map")

        patched.setattr(plane._table, "items_u32", no_read)
        patched.setattr(plane._table, "lookup", no_read)
        plane.apply(stated(start, churned), version=V2, content_hash=digest(churned))

    assert plane.load() == base.Persisted(V2, digest(churned), churned)


def test_a_failed_write_of_a_stated_diff_restores_what_it_stated(
    plane: bpfmap.BpfDataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = {key: 1 for key in range(1, 1001)}
    put(plane, start, V1)
    before = plane.load()
    monkeypatch.setattr(bpfmap, "_check_capacity", lambda *args, **kwargs: None)
    target = {key: 2 for key in range(11, 1101)}  # the kernel stops the batch at E2BIG

    with pytest.raises(errors.DataPlaneError, match="were restored") as caught:
        plane.apply(stated(start, target), version=V2, content_hash=digest(target))

    assert "E2BIG" in str(caught.value)
    assert plane.load() == before


def test_a_stated_diff_is_refused_as_too_large_only_if_the_map_says_so(
    plane: bpfmap.BpfDataPlane,
) -> None:
    full = {key: 1 for key in range(1, 1025)}
    put(plane, full, V1)
    # Stated against an empty table: by its word every update adds an entry (2048 > 1024),
    # but the map holds every key already, so it fits.
    plane.apply(stated({}, {key: 2 for key in full}), version=V2, content_hash=b"")
    assert plane.read() == {key: 2 for key in full}

    too_big = {key: 3 for key in range(1, 1026)}
    with pytest.raises(errors.DataPlaneError, match="at most 1024"):
        plane.apply(stated({key: 2 for key in full}, too_big), version=V2, content_hash=b"")
    assert plane.read() == {key: 2 for key in full}


def test_out_of_range_value_is_refused_before_any_write(plane: bpfmap.BpfDataPlane) -> None:
    put(plane, {1: 1}, V1)
    before = plane.load()

    with pytest.raises(errors.DataPlaneError, match="nothing was written"):
        plane.apply(diff.MapDiff(updates={2: 2**32}, deletes=(1,)), version=V2, content_hash=b"")

    assert plane.load() == before


def test_second_open_in_the_same_process_is_refused(
    plane: bpfmap.BpfDataPlane, pin_dir: str
) -> None:
    with pytest.raises(errors.PinDirInUse, match=f"BPF_PIN_DIR {pin_dir} is already used"):
        bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)


def test_second_open_in_another_process_is_refused(
    plane: bpfmap.BpfDataPlane, pin_dir: str
) -> None:
    child = run_python(
        "from gossip_agent import errors; from gossip_agent.dataplane import bpfmap\n"
        "try:\n"
        f"    bpfmap.open_pinned(pin_dir={pin_dir!r}, max_entries=1024)\n"
        "except errors.PinDirInUse as exc:\n"
        "    print('refused:', exc)\n"
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(f"refused: BPF_PIN_DIR {pin_dir} is already used")


def test_close_releases_the_pin_dir(pin_dir: str) -> None:
    first = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    first.close()
    first.close()  # idempotent
    second = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    second.close()


def test_pin_dir_outside_bpffs_is_refused(tmp_path: Path) -> None:
    require_bpf()
    with pytest.raises(errors.DataPlaneError, match="not on a BPF filesystem"):
        bpfmap.open_pinned(pin_dir=str(tmp_path / "pins"), max_entries=1024)


def test_bpf_available_says_why_not_for_an_ordinary_directory(tmp_path: Path) -> None:
    ok, why = bpfmap.bpf_available(str(tmp_path))
    assert not ok
    assert str(tmp_path) in why and "not a mounted BPF filesystem" in why


def test_meta_written_by_layout_version_1_is_read_and_kept(pin_dir: str) -> None:
    first = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    put(first, {0x0A60000A: 3}, V1)
    record = layout.META_STRUCT.pack(V1.term, V1.seq, digest({0x0A60000A: 3}), 1, 0)
    first._meta.update(struct.pack("=I", layout.META_KEY), record)  # as version 1 wrote it
    first.close()

    plane = bpfmap.open_pinned(pin_dir=pin_dir, max_entries=1024)
    try:
        assert plane.load() == base.Persisted(V1, digest({0x0A60000A: 3}), {0x0A60000A: 3})
    finally:
        plane.close()
