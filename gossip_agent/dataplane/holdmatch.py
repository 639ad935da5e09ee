"""The cold-start hold match: bpf/hold_match.bpf.c compiled with bcc and pinned for xt_bpf.

iptables' bpf match (`-m bpf --object-pinned <pin_dir>/HOLD_MATCH`) takes a program pinned on
bpffs; the raw-table rule that queues held packets to NFQUEUE uses it (docs/cold-start.md).
The program reads the XDP program's pinned SERVICE_LIST and HEARTBEAT, so those pins must exist
first (bpfmap.open_pinned creates them): bcc's BPF_TABLE_PINNED reuses a pin without checking
its shape, exactly as for the XDP program (xdp.py).

Invariant: the rule holds its own reference on the program from the moment it is inserted, so
re-pinning (a new agent) does not change what an existing rule runs; the agent that installs
the rule must replace the rule, not only the pin. Compiling costs about 0.5 s of CPU.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Any

from gossip_agent.dataplane import xdp, xdpsys

SOURCE = pathlib.Path(str(importlib.resources.files(__package__) / "bpf" / "hold_match.bpf.c"))
FUNCTION = "hold_match"
PIN = "HOLD_MATCH"  # <pin_dir>/HOLD_MATCH, next to XDP_PROG


class HoldMatch:
    """The loaded match program (a bcc.BPF module kept alive with it) and where it is pinned."""

    def __init__(self, *, pin_dir: str, max_entries: int) -> None:
        self.pin_path = os.path.join(pin_dir, PIN)
        self._bpf, self.fd = _load(pin_dir=pin_dir, max_entries=max_entries)

    def pin(self) -> None:
        """Pins the program at <pin_dir>/HOLD_MATCH, replacing an earlier pin."""
        xdpsys.pin_replacing(self.fd, self.pin_path)

    def unpin(self) -> None:
        """Removes the pin (the program lives on while a rule still references it)."""
        try:
            os.unlink(self.pin_path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._bpf.cleanup()


def _load(*, pin_dir: str, max_entries: int) -> tuple[Any, int]:
    """(the bcc.BPF module, the socket-filter program's fd), compiled as the XDP program is."""
    return xdp.compile_and_load(SOURCE, FUNCTION, "SOCKET_FILTER", pin_dir=pin_dir,
                                max_entries=max_entries)
