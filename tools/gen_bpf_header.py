"""Writes bpf/service_list.h from gossip_agent/dataplane/layout.py (the one map contract).

Run after changing layout.py; tests/unit/test_bpf_header.py fails while the two disagree.
"""

from __future__ import annotations

import pathlib

from gossip_agent.dataplane import layout

HEADER = pathlib.Path(__file__).resolve().parent.parent / "bpf" / "service_list.h"

if __name__ == "__main__":
    HEADER.write_text(layout.c_header(), encoding="utf-8")
    print(f"wrote {HEADER}")
