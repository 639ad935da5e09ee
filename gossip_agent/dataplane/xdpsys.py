"""XDP attach, replace, query and detach through libbpf's netlink calls (ctypes), plus the
program-object calls they need (pin, get by id, info).

Why libbpf and not bcc's attach_xdp or `ip link`: bcc's call has no expected-old-program
argument, and `ip link` is a process per call. libbpf's bpf_xdp_attach takes old_prog_fd and
then sets XDP_FLAGS_REPLACE, so the kernel swaps the program only if the one attached is still
the one we expect (compare-and-swap): a restart replaces the program with no moment where the
interface has none, and never clobbers a program someone attached in between (EEXIST).

Contracts:
- Attachments made here outlive this process (netlink, no bpf_link): detaching is explicit.
- Every failure raises bpfsys.BpfError naming the call and the interface.
- libbpf 1.1 (Debian 12) opts structs: the size field first, then the fields we use; any
  trailing bytes must be zero (libbpf checks), which ctypes' zero-initialisation guarantees.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as errno_codes
import functools
import os
from typing import Any

from gossip_agent.system import bpfsys

# include/uapi/linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
# attach modes reported by the kernel (enum XDP_ATTACHED_*) -> the name we report
MODE_NAMES = {0: "none", 1: "native", 2: "generic", 3: "offload", 4: "multi"}
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE,
              "offload": XDP_FLAGS_HW_MODE}


class _AttachOpts(ctypes.Structure):
    # struct bpf_xdp_attach_opts { size_t sz; int old_prog_fd; size_t :0; }
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int),
                ("_pad", ctypes.c_int)]


class _QueryOpts(ctypes.Structure):
    # struct bpf_xdp_query_opts { size_t sz; __u32 prog_id, drv_prog_id, hw_prog_id,
    #                             skb_prog_id; __u8 attach_mode; size_t :0; }
    _fields_ = [("sz", ctypes.c_size_t), ("prog_id", ctypes.c_uint32),
                ("drv_prog_id", ctypes.c_uint32), ("hw_prog_id", ctypes.c_uint32),
                ("skb_prog_id", ctypes.c_uint32), ("attach_mode", ctypes.c_uint8)]


class _ProgInfoPrefix(ctypes.Structure):
    """The leading fields of struct bpf_prog_info (the kernel copies min(ours, its size))."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


@functools.cache
def _lib() -> Any:
    lib = bpfsys._lib()  # libbcc, whose handle also resolves libbpf's symbols
    c_int, c_uint32, c_void_p = ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
    lib.bpf_xdp_attach.argtypes = [c_int, c_int, c_uint32, c_void_p]
    lib.bpf_xdp_attach.restype = c_int
    lib.bpf_xdp_query.argtypes = [c_int, c_int, c_void_p]
    lib.bpf_xdp_query.restype = c_int
    lib.bpf_prog_get_fd_by_id.argtypes = [c_uint32]
    lib.bpf_prog_get_fd_by_id.restype = c_int
    return lib


@dataclasses.dataclass(frozen=True, slots=True)
class Attached:
    """What an interface carries: prog_id 0 = no XDP program."""

    prog_id: int
    mode: str  # "none", "native", "generic", "offload" or "multi"


def query(ifindex: int, *, name: str) -> Attached:
    opts = _QueryOpts(sz=ctypes.sizeof(_QueryOpts))
    bpfsys._call("xdp_query", name, _lib().bpf_xdp_query, ifindex, 0, ctypes.byref(opts))
    mode = MODE_NAMES.get(opts.attach_mode, f"mode {opts.attach_mode}")
    return Attached(opts.prog_id, mode)


def _mode_flag(mode: str, *, name: str) -> int:
    if mode not in MODE_FLAGS:  # "multi": programs in several modes at once, not ours to touch
        raise bpfsys.BpfError(f"xdp on {name}: cannot act on a program attached in {mode} mode",
                              errno=errno_codes.EOPNOTSUPP)
    return MODE_FLAGS[mode]


def attach(ifindex: int, prog_fd: int, *, name: str, mode: str, expected_fd: int = 0) -> None:
    """Attaches prog_fd in `mode`. expected_fd 0: only if the interface has no XDP program
    (EBUSY/EEXIST otherwise); else: only if the attached program is still expected_fd's, and
    the swap is atomic (the interface is never without a program)."""
    flags = _mode_flag(mode, name=name)
    if not expected_fd:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    opts = _AttachOpts(sz=ctypes.sizeof(_AttachOpts), old_prog_fd=expected_fd)
    bpfsys._call(f"xdp_attach ({mode})", name, _lib().bpf_xdp_attach, ifindex, prog_fd, flags,
                 ctypes.byref(opts))


def detach(ifindex: int, *, name: str, mode: str, expected_fd: int) -> None:
    """Detaches the program expected_fd refers to; fails (EEXIST) if another one is attached."""
    opts = _AttachOpts(sz=ctypes.sizeof(_AttachOpts), old_prog_fd=expected_fd)
    bpfsys._call("xdp_detach", name, _lib().bpf_xdp_attach, ifindex, -1,
                 _mode_flag(mode, name=name), ctypes.byref(opts))


def prog_fd_by_id(prog_id: int) -> int | None:
    """An fd on the loaded program with this id, or None if it is gone."""
    try:
        return bpfsys._call("prog_get_fd_by_id", f"program {prog_id}",
                            _lib().bpf_prog_get_fd_by_id, prog_id)
    except bpfsys.BpfError as exc:
        if exc.errno == errno_codes.ENOENT:
            return None
        raise


@dataclasses.dataclass(frozen=True, slots=True)
class ProgInfo:
    prog_id: int
    name: str
    map_ids: tuple[int, ...]


def prog_info(fd: int, *, what: str) -> ProgInfo:
    """Id, name and the ids of the maps the program uses (two calls: count, then ids)."""
    info = _ProgInfoPrefix()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    get_info = bpfsys._lib().bpf_obj_get_info_by_fd
    bpfsys._call("prog_get_info", what, get_info, fd, ctypes.byref(info), ctypes.byref(size))
    count = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(count, 1))()
    info2 = _ProgInfoPrefix(nr_map_ids=count, map_ids=ctypes.addressof(ids))
    size.value = ctypes.sizeof(info2)
    bpfsys._call("prog_get_info", what, get_info, fd, ctypes.byref(info2), ctypes.byref(size))
    return ProgInfo(info.id, info.name.decode(errors="replace"),
                    tuple(ids[: min(count, info2.nr_map_ids)]))


def pin_replacing(fd: int, path: str) -> None:
    """Pins the object at path, replacing whatever was pinned there (unlink, then pin)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    bpfsys._call("obj_pin", path, bpfsys._lib().bpf_obj_pin, fd, path.encode())


def get_pinned(path: str) -> int | None:
    """An fd on the object pinned at path (any kind), or None if nothing is pinned there."""
    return bpfsys._obj_get(path)
