"""The C header the XDP program includes is generated from dataplane/layout.py: they agree."""

from __future__ import annotations

import pathlib
import re

import pytest

from gossip_agent.dataplane import layout
from gossip_agent.system import bpfsys

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_header_is_what_layout_generates() -> None:
    committed = (ROOT / "bpf" / "service_list.h").read_text(encoding="utf-8")
    assert committed == layout.c_header(), (
        "bpf/service_list.h differs from layout.py: run .venv/bin/python tools/gen_bpf_header.py"
    )


def test_program_declares_every_pinned_map_of_the_layout_with_its_c_types() -> None:
    source = (ROOT / "bpf" / "service_list.bpf.c").read_text(encoding="utf-8")
    declared = {
        match[3]: (match[0], match[1], match[2], match[4])
        for match in re.findall(
            r'BPF_TABLE_PINNED\("(\w+)",\s*(\w+),\s*([\w ]+?),\s*(\w+),\s*(\w+),', source)
    }
    c_types = {4: "u32", 8: "u64", layout.STATS_STRUCT.size: "struct service_stats",
               layout.HEARTBEAT_STRUCT.size: "struct heartbeat"}
    for spec in layout.pinned_specs(layout.DEFAULT_MAX_ENTRIES):
        if spec.name == layout.SERVICE_LIST_META:
            continue  # written and read by the agent only; the program never needs it
        kind, key, value, entries = declared[spec.name]
        assert kind == bpfsys.MAP_TYPE_NAMES[spec.map_type], spec.name
        assert (key, value) == (c_types[spec.key_size], c_types[spec.value_size]), spec.name
        expected = "1" if spec.max_entries == 1 else "SERVICE_LIST_MAX_ENTRIES"
        assert entries == expected, spec.name
        assert f'PIN_DIR "/{spec.name}"' in source, spec.name
    assert f"int {layout.PROGRAM_FUNCTION}(struct xdp_md *ctx)" in source
