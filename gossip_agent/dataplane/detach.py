"""`gossip-agent detach`: remove this agent's XDP program and pinned maps from the host.

Normal shutdown leaves both in place on purpose (the node keeps enforcing the last agreed
state). Detaching is the explicit uninstall: for every interface of the CURRENT network
namespace that carries this pin directory's program (xdp.owned), detach it with the expected
program given (so a program someone attached meanwhile is never removed), then unlink the
layout's pins and XDP_PROG, and the directory if nothing else is left in it. The lease's own
files (leader_lock, LEADER) are left to the lease backend.

Refused while an agent runs on the pin directory (errors.PinDirInUse): it would re-create
the maps and re-attach on the next link event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket

from gossip_agent import errors
from gossip_agent.dataplane import layout, xdp, xdpsys
from gossip_agent.system import bpfsys


@dataclasses.dataclass(frozen=True, slots=True)
class Detached:
    interfaces: tuple[str, ...]  # detached from these
    skipped: tuple[str, ...]  # "name: why" for interfaces whose program is not ours
    removed: tuple[str, ...]  # pin paths unlinked
    failed: tuple[str, ...] = ()  # "name: why": ours but not detached; the pins were kept


def detach(*, pin_dir: str) -> Detached:
    lock_fd = _lock(pin_dir)
    try:
        table_map_id = _table_map_id(pin_dir)
        pinned_id = xdp.pinned_prog_id(pin_dir)
        done, skipped, failed = _detach_interfaces(table_map_id=table_map_id,
                                                   pinned_id=pinned_id)
        # A program left attached still enforces: keep its pins so a new agent or a second
        # detach can find and replace it, rather than orphaning it.
        removed = [] if failed else _remove_pins(pin_dir)
    finally:
        os.close(lock_fd)
    with contextlib.suppress(OSError):
        os.rmdir(pin_dir)  # only if empty (no lease files, nothing else)
    return Detached(tuple(done), tuple(skipped), tuple(removed), tuple(failed))


def _lock(pin_dir: str) -> int:
    if not os.path.isdir(pin_dir):
        raise errors.DataPlaneError(f"BPF_PIN_DIR {pin_dir} does not exist: nothing to detach")
    fd = bpfsys.lock_directory(pin_dir)
    if fd is None:
        raise errors.PinDirInUse(
            f"an agent is running on BPF_PIN_DIR {pin_dir}; stop it before detaching")
    return fd


def _table_map_id(pin_dir: str) -> int:
    fd = xdpsys.get_pinned(os.path.join(pin_dir, layout.SERVICE_LIST))
    if fd is None:
        return 0
    try:
        return bpfsys.map_info(fd, path=pin_dir).map_id
    finally:
        os.close(fd)


def _detach_interfaces(
    *, table_map_id: int, pinned_id: int
) -> tuple[list[str], list[str], list[str]]:
    done: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    for ifindex, name in socket.if_nameindex():
        current = xdpsys.query(ifindex, name=name)
        if current.prog_id == 0:
            continue
        if not xdp.owned(current.prog_id, table_map_id=table_map_id, pinned_id=pinned_id):
            skipped.append(f"{name}: program {current.prog_id} is not this agent's")
            continue
        old_fd = xdpsys.prog_fd_by_id(current.prog_id)
        if old_fd is None:
            continue  # detached meanwhile
        try:
            xdpsys.detach(ifindex, name=name, mode=current.mode, expected_fd=old_fd)
        except errors.DataPlaneError as exc:  # replaced meanwhile, or a mode we cannot handle
            failed.append(f"{name}: {exc}")
            continue
        finally:
            os.close(old_fd)
        done.append(name)
    return done, skipped, failed


def _remove_pins(pin_dir: str) -> list[str]:
    names = [spec.name for spec in layout.pinned_specs(layout.DEFAULT_MAX_ENTRIES)]
    removed = []
    for name in (*names, layout.XDP_PROG):
        path = os.path.join(pin_dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed
