"""The XDP program: compiled and loaded with bcc from bpf/service_list.bpf.c, attached with libbpf.

Load: the pinned maps must already exist with the layout's shape (bpfmap.open_pinned, which
migrates old pins): bcc's BPF_TABLE_PINNED reuses a pin without checking it. The pin directory
and max_entries reach the C code as -D flags; the layout itself comes from the generated
bpf/service_list.h. Compiling costs about 3 s of CPU, so it happens once per agent start.

Which XDP program on an interface is ours (and may be replaced): one that uses this agent's
SERVICE_LIST map (by kernel map id), or the one pinned at <pin_dir>/XDP_PROG by the previous
run (it still uses the pre-migration map after a migration). Anything else belongs to another
component (a CNI, another agent): that interface is skipped, and the state says so.

Attach policy per interface (attach_to):
  - no program: attach ours, native mode first, generic (SKB) mode if the driver refuses,
    or only the mode XDP_MODE names; only-if-none (a program attached meanwhile wins);
  - ours from before (restart): atomic replace in the mode it runs in, expecting that exact
    program, so the interface is never without one;
  - ours already: nothing to do; foreign: skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno as errno_codes
import importlib.resources
import logging
import os
import pathlib
from typing import Any

from gossip_agent import errors
from gossip_agent.dataplane import events, layout, xdpsys
from gossip_agent.system import bpfsys

log = logging.getLogger("gossip_agent.xdp")

# The C source is package data: gossip_agent/dataplane/bpf links to the repository's top-level
# bpf/ (the C code's one home), and the wheel carries a copy of both files (pyproject.toml's
# package-data). So an installed wheel or the container image compiles the program from where the
# package is installed, never from a checkout's layout. bcc compiles from a path and
# service_list.h is found next to it (-I), so this must be a directory on disk: it is, for a
# package installed from a wheel (tests/integration/test_package_data.py builds one).
SOURCE = pathlib.Path(str(importlib.resources.files(__package__) / "bpf" / "service_list.bpf.c"))
MODES = ("auto", "native", "generic")
_NATIVE_REFUSED = frozenset({errno_codes.EOPNOTSUPP, errno_codes.EINVAL, bpfsys.ENOTSUPP})


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceState:
    """What the agent did on one interface, as the API and the log report it."""

    name: str
    ifindex: int
    status: str  # "attached", "replaced", "foreign" (skipped), "failed"
    mode: str  # "native", "generic", ... or "" when not attached by us
    detail: str = ""  # why skipped or failed; the foreign program's id and name


class Program:
    """The loaded program (a bcc.BPF module); owns its scale-up event ring."""

    def __init__(self, *, pin_dir: str, max_entries: int, table_map_id: int) -> None:
        self.pin_dir = pin_dir
        self.table_map_id = table_map_id
        self.pin_path = os.path.join(pin_dir, layout.XDP_PROG)
        self._previous_id = _pinned_prog_id(self.pin_path)
        self._bpf, self.fd = _load(pin_dir=pin_dir, max_entries=max_entries)
        self.prog_id = xdpsys.prog_info(self.fd, what=self.pin_path).prog_id
        self._ring_open = False

    def pin(self) -> None:
        """Pins this program at <pin_dir>/XDP_PROG (replacing the previous run's pin)."""
        xdpsys.pin_replacing(self.fd, self.pin_path)

    def is_ours(self, prog_id: int) -> bool:
        return prog_id == self.prog_id or owned(
            prog_id, table_map_id=self.table_map_id, pinned_id=self._previous_id)

    def attach_to(self, name: str, ifindex: int, *, mode: str) -> InterfaceState:
        """Applies the attach policy (module docstring) to one interface; never raises for
        a refusal by the kernel: the returned state says what happened."""
        try:
            current = xdpsys.query(ifindex, name=name)
            if current.prog_id == self.prog_id:
                return InterfaceState(name, ifindex, "attached", current.mode)
            if current.prog_id == 0:
                return self._attach_fresh(name, ifindex, mode=mode)
            if self.is_ours(current.prog_id):
                return self._replace(name, ifindex, current)
            detail = f"another XDP program (id {current.prog_id}) is attached; left alone"
            return InterfaceState(name, ifindex, "foreign", "", detail)
        except errors.DataPlaneError as exc:
            return InterfaceState(name, ifindex, "failed", "", str(exc))

    def _attach_fresh(self, name: str, ifindex: int, *, mode: str) -> InterfaceState:
        tried = ("native", "generic") if mode == "auto" else (mode,)
        for index, candidate in enumerate(tried):
            try:
                xdpsys.attach(ifindex, self.fd, name=name, mode=candidate)
            except bpfsys.BpfError as exc:
                if exc.errno in (errno_codes.EBUSY, errno_codes.EEXIST):
                    # Someone attached between our query and our call: never replace it.
                    return InterfaceState(name, ifindex, "foreign", "",
                                          f"a program was attached meanwhile ({exc})")
                if index + 1 < len(tried) and exc.errno in _NATIVE_REFUSED:
                    continue
                raise
            return InterfaceState(name, ifindex, "attached", candidate)
        raise AssertionError("unreachable: the last mode either returns or raises")

    def _replace(self, name: str, ifindex: int, current: xdpsys.Attached) -> InterfaceState:
        old_fd = xdpsys.prog_fd_by_id(current.prog_id)
        if old_fd is None:  # detached meanwhile: the interface is free
            return self._attach_fresh(name, ifindex, mode=current.mode)
        try:
            xdpsys.attach(ifindex, self.fd, name=name, mode=current.mode, expected_fd=old_fd)
        finally:
            os.close(old_fd)
        return InterfaceState(name, ifindex, "replaced", current.mode,
                              f"replaced program {current.prog_id} atomically")

    # --- scale-up events ---------------------------------------------------------------------

    async def read_events(self, hub: events.EventHub) -> None:
        """Drains the program's ring into hub until cancelled (task `xdp.events`).

        The ring's map fd is readable (poll/epoll) whenever records wait, so the loop sleeps
        in the selector, not in a thread or a timed poll.
        """
        ring = self._bpf[b"SCALE_EVENTS"]

        def on_record(_ctx: Any, data: Any, size: int) -> int:
            raw = ctypes.string_at(data, size)
            service, source, timestamp = layout.EVENT_STRUCT.unpack_from(raw)
            hub.publish(events.ScaleUpEvent(service, source, timestamp))
            return 0

        if not self._ring_open:
            ring.open_ring_buffer(on_record)
            self._ring_open = True
        readable = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(ring.map_fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                self._bpf.ring_buffer_consume()
        finally:
            loop.remove_reader(ring.map_fd)

    def close(self) -> None:
        """Frees this process's handles; an attached or pinned program stays loaded."""
        with contextlib.suppress(Exception):
            self._bpf.cleanup()


def _load(*, pin_dir: str, max_entries: int) -> tuple[Any, int]:
    """(the bcc.BPF module, the XDP program's fd)."""
    return compile_and_load(SOURCE, layout.PROGRAM_FUNCTION, "XDP", pin_dir=pin_dir,
                            max_entries=max_entries)


def compile_and_load(
    source: Any, function: str, program_type: str, *, pin_dir: str, max_entries: int
) -> tuple[Any, int]:
    """Compiles one of bpf/'s programs against the pinned maps under `pin_dir` with bcc and
    loads `function` as BPF.<program_type>: (the bcc.BPF module, the program's fd). The XDP
    program and the hold match (holdmatch.py) share it; DataPlaneError when bcc is missing or
    the compile or load fails."""
    try:
        from bcc import BPF  # lazy: only agents that load a program need the compiler
    except Exception as exc:
        raise errors.DataPlaneError(f"bcc is not usable: {exc}") from exc
    cflags = [
        f'-DPIN_DIR="{pin_dir}"',
        f"-DSERVICE_LIST_MAX_ENTRIES={max_entries}",
        f"-I{source.parent}",
    ]
    # bcc wants bytes for paths and names (str works but warns: DeprecationWarning).
    try:
        module = BPF(src_file=str(source).encode(), cflags=cflags)
        return module, int(module.load_func(function.encode(), getattr(BPF, program_type)).fd)
    except Exception as exc:  # bcc raises bare Exception for compile and load failures
        raise errors.DataPlaneError(f"cannot compile and load {source}: {exc}") from exc


def owned(prog_id: int, *, table_map_id: int, pinned_id: int) -> bool:
    """True if the program is this pin directory's: pinned there, or using its SERVICE_LIST."""
    if prog_id == pinned_id and prog_id:
        return True
    fd = xdpsys.prog_fd_by_id(prog_id)
    if fd is None:
        return False
    try:
        return table_map_id in xdpsys.prog_info(fd, what=f"program {prog_id}").map_ids
    finally:
        os.close(fd)


def pinned_prog_id(pin_dir: str) -> int:
    """The id of the program pinned at <pin_dir>/XDP_PROG, 0 if none."""
    return _pinned_prog_id(os.path.join(pin_dir, layout.XDP_PROG))


def _pinned_prog_id(path: str) -> int:
    fd = xdpsys.get_pinned(path)
    if fd is None:
        return 0
    try:
        return xdpsys.prog_info(fd, what=path).prog_id
    finally:
        os.close(fd)
