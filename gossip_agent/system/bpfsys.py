"""A thin bpf() syscall layer over libbcc through ctypes: pinned maps without compiling C.

Why not bcc.BPF(text=...): compiling even a maps-only program costs 0.5 s of CPU, paid by every
agent at every start (32 agents on 2 cores). libbcc already exports the map syscalls; this
module declares their C signatures, turns errno into exceptions that name the pin path, and
adds the two things the callers need on top: race-safe create-or-reuse of a pin, and batch
calls that fall back to one-by-one calls where the kernel has no batch for the map.

Contracts:
- Only this module and dataplane/bpfmap.py import bcc (an import-linter contract checks the
  other layers), and it is imported lazily on first use: a host without bcc can still use
  is_bpffs() and lock_directory(), e.g. the bpffs lease's ordinary-directory fallback.
- Every failure raises BpfError (an errors.DataPlaneError) carrying the errno; its message is
  a sentence naming the operation and the path.
- An existing pin is never replaced: it is reused with its entries when its type, key size,
  value size and max_entries match the MapSpec, and refused otherwise.
- Batch calls are NOT atomic in the kernel: a failing batch may have applied its first
  `count` elements. Callers that need all-or-nothing restore what they touched (bpfmap.apply).

libbcc / libbpf conventions (bcc 0.26 on Debian, linked against libbpf 1.1):
- bcc's Python package declares argtypes for the elem/batch calls but not for bcc_create_map,
  bpf_obj_pin, bpf_obj_get or bpf_obj_get_info_by_fd; the last three are libbpf symbols that
  ctypes finds through libbcc's handle (dlsym searches its dependencies).
- libbpf >= 1.0 returns -errno AND sets errno; ctypes keeps a private errno copy (the library
  handle is opened with use_errno=True), which is only meaningful right after a failing call.
"""

from __future__ import annotations

import array
import ctypes
import dataclasses
import errno as errno_codes
import fcntl
import functools
import os
import struct
from collections.abc import Callable, Iterable
from typing import Any

from gossip_agent import errors

BPF_FS_MAGIC = 0xCAFE4A11  # statfs f_type of a bpffs mount (include/uapi/linux/magic.h)
BPF_ANY = 0  # update flag: create or overwrite
ENOTSUPP = 524  # kernel-internal "operation not supported" that leaks out of bpf()
# errnos meaning "no batch command for this map / kernel" (batch ops arrived in Linux 5.6).
_NO_BATCH = frozenset({errno_codes.EINVAL, errno_codes.EOPNOTSUPP, ENOTSUPP})
_U32 = struct.Struct("=I")

# Kernel enum bpf_map_type values (include/uapi/linux/bpf.h); stable UAPI.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
# Maps whose values the kernel keeps once per possible CPU.
PERCPU_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                          BPF_MAP_TYPE_LRU_PERCPU_HASH})

MAP_TYPE_NAMES = {
    BPF_MAP_TYPE_HASH: "hash",
    BPF_MAP_TYPE_ARRAY: "array",
    BPF_MAP_TYPE_LRU_HASH: "lru_hash",
    BPF_MAP_TYPE_LRU_PERCPU_HASH: "lru_percpu_hash",
}


@dataclasses.dataclass(frozen=True, slots=True)
class MapSpec:
    """What a pinned map must be; an existing pin is checked against every field."""

    name: str  # the pin's file name and the map name (the kernel keeps the first 15 bytes)
    map_type: int
    key_size: int
    value_size: int
    max_entries: int

    def describe(self) -> str:
        kind = MAP_TYPE_NAMES.get(self.map_type, f"type {self.map_type}")
        return (
            f"{kind} key {self.key_size}B value {self.value_size}B max_entries {self.max_entries}"
        )


class BpfError(errors.DataPlaneError):
    """A bpf() call failed; `errno` says why (ENOENT, EEXIST, E2BIG, EPERM...)."""

    def __init__(self, message: str, *, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


def _error(what: str, path: str, err: int) -> BpfError:
    name = errno_codes.errorcode.get(err, str(err))
    return BpfError(f"bpf {what} on {path} failed: {os.strerror(err)} ({name})", errno=err)


@functools.cache
def _lib() -> Any:
    """libbcc with the C signatures declared (bcc 0.26 src/cc/libbpf.h, libbpf 1.1 bpf.h)."""
    try:
        from bcc.libbcc import lib  # lazy: only hosts that use BPF maps need bcc
    except Exception as exc:  # ImportError, or OSError when libbcc.so.0 is missing
        raise BpfError(f"bcc is not usable: {exc}", errno=errno_codes.ENOSYS) from exc
    c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
    u32_p = ctypes.POINTER(ctypes.c_uint32)
    # int bcc_create_map(enum bpf_map_type, const char *name, int key_size, int value_size,
    #                    int max_entries, int map_flags)
    lib.bcc_create_map.argtypes = [c_int, c_char_p, c_int, c_int, c_int, c_int]
    lib.bcc_create_map.restype = c_int
    lib.bpf_obj_pin.argtypes = [c_int, c_char_p]  # int bpf_obj_pin(int fd, const char *path)
    lib.bpf_obj_pin.restype = c_int
    lib.bpf_obj_get.argtypes = [c_char_p]  # int bpf_obj_get(const char *path)
    lib.bpf_obj_get.restype = c_int
    # int bpf_obj_get_info_by_fd(int fd, void *info, __u32 *info_len)
    lib.bpf_obj_get_info_by_fd.argtypes = [c_int, c_void_p, u32_p]
    lib.bpf_obj_get_info_by_fd.restype = c_int
    return lib


def _call(what: str, path: str, func: Callable[..., int], *args: Any) -> int:
    """Calls a libbcc/libbpf function; a negative return becomes BpfError."""
    ctypes.set_errno(0)
    ret = int(func(*args))
    if ret < 0:
        raise _error(what, path, ctypes.get_errno() or -ret)
    return ret


# --- map info --------------------------------------------------------------------------------


class _MapInfoPrefix(ctypes.Structure):
    """The leading fields of struct bpf_map_info; the kernel copies min(our size, its size)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class MapInfo:
    map_type: int
    map_id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str

    def as_spec(self) -> MapSpec:
        return MapSpec(
            self.name, self.map_type, self.key_size, self.value_size, self.max_entries
        )


def map_info(fd: int, *, path: str) -> MapInfo:
    info = _MapInfoPrefix()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    lib = _lib()
    _call("obj_get_info", path, lib.bpf_obj_get_info_by_fd, fd, ctypes.byref(info), size)
    return MapInfo(
        map_type=info.type,
        map_id=info.id,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        map_flags=info.map_flags,
        name=info.name.decode(errors="replace"),
    )


def _check_compatible(info: MapInfo, spec: MapSpec, *, path: str) -> None:
    found = info.as_spec()
    if (found.map_type, found.key_size, found.value_size, found.max_entries) != (
        spec.map_type,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
    ):
        raise BpfError(
            f"the map pinned at {path} is incompatible: found {found.describe()}, expected "
            f"{spec.describe()}; it was left as it is (remove it by hand, or configure a "
            f"matching size or another pin directory)",
            errno=errno_codes.EEXIST,
        )


# --- create, pin, open ------------------------------------------------------------------------


def create_map(spec: MapSpec, *, path: str) -> int:
    """A new, unpinned map; returns its fd (close-on-exec, as the kernel makes every bpf fd)."""
    lib = _lib()
    return _call(
        "map_create",
        path,
        lib.bcc_create_map,
        spec.map_type,
        spec.name.encode(),
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        0,
    )


def _obj_get(path: str) -> int | None:
    """The fd of the object pinned at path, or None when nothing is pinned there."""
    try:
        return _call("obj_get", path, _lib().bpf_obj_get, path.encode())
    except BpfError as exc:
        if exc.errno == errno_codes.ENOENT:
            return None
        raise


def _get_or_create(path: str, spec: MapSpec) -> int:
    """Race-safe: get; on ENOENT create and pin; if another process pinned first, get theirs.

    bpf_obj_pin fails with EEXIST rather than replacing a pin, so two agents racing here end
    up sharing the winner's map and neither blanks it.
    """
    for _ in range(3):  # the pin can only vanish between our get and pin if removed by hand
        fd = _obj_get(path)
        if fd is not None:
            return fd
        fd = create_map(spec, path=path)
        try:
            _call("obj_pin", path, _lib().bpf_obj_pin, fd, path.encode())
            return fd
        except BpfError as exc:
            os.close(fd)
            if exc.errno != errno_codes.EEXIST:
                raise
    raise _error("obj_get", path, errno_codes.ENOENT)


class PinnedMap:
    """An open fd on a pinned map, whose errors name the pin path."""

    def __init__(self, fd: int, *, path: str, spec: MapSpec) -> None:
        self.fd = fd
        self.path = path
        self.spec = spec

    @classmethod
    def open_or_create(cls, path: str, spec: MapSpec) -> PinnedMap:
        return cls._checked(_get_or_create(path, spec), path, spec)

    @classmethod
    def open_existing(cls, path: str, spec: MapSpec) -> PinnedMap | None:
        fd = _obj_get(path)
        return None if fd is None else cls._checked(fd, path, spec)

    @classmethod
    def _checked(cls, fd: int, path: str, spec: MapSpec) -> PinnedMap:
        try:
            _check_compatible(map_info(fd, path=path), spec, path=path)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path=path, spec=spec)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def value_bytes(self) -> int:
        """Bytes of one value as bpf() passes it: per-CPU maps hold one 8-byte aligned copy
        per possible CPU."""
        if self.spec.map_type in PERCPU_TYPES:
            return possible_cpus() * ((self.spec.value_size + 7) // 8 * 8)
        return self.spec.value_size

    def keys_raw(self) -> list[bytes]:
        """Every key, as raw bytes (get_next_key walk; for migration and small maps)."""
        keys: list[bytes] = []
        key = ctypes.create_string_buffer(self.spec.key_size)
        next_key = ctypes.create_string_buffer(self.spec.key_size)
        get_next = _lib().bpf_get_next_key
        for _ in range(2 * self.spec.max_entries + 1):
            try:
                _call("get_next_key", self.path, get_next, self.fd, key if keys else None,
                      next_key)
            except BpfError as exc:
                if exc.errno == errno_codes.ENOENT:
                    break
                raise
            keys.append(next_key.raw)
            ctypes.memmove(key, next_key, self.spec.key_size)
        return keys

    # --- one element, raw bytes (records such as the meta map and the lease map) ---

    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self.value_bytes)
        try:
            _call("lookup", self.path, _lib().bpf_lookup_elem, self.fd, key, value)
        except BpfError as exc:
            if exc.errno == errno_codes.ENOENT:
                return None
            raise
        return value.raw

    def update(self, key: bytes, value: bytes) -> None:
        if len(value) != self.value_bytes:
            raise ValueError(f"value is {len(value)} bytes; {self.path} takes {self.spec}")
        _call("update", self.path, _lib().bpf_update_elem, self.fd, key, value, BPF_ANY)

    def delete(self, key: bytes) -> bool:
        """Deletes key; False if it was not there."""
        try:
            _call("delete", self.path, _lib().bpf_delete_elem, self.fd, key)
        except BpfError as exc:
            if exc.errno == errno_codes.ENOENT:
                return False
            raise
        return True

    # --- u32 -> u32 tables (SERVICE_LIST), batched ---

    def update_u32_batch(self, keys: Iterable[int], values: Iterable[int]) -> None:
        """Writes key[i] -> value[i]; one bpf() call where the kernel has batches."""
        ks, vs = _u32_array(keys), _u32_array(values)
        if len(ks) == 1:  # the plain update: same effect, a third of the batch call's cost
            self.update(_U32.pack(ks[0]), _U32.pack(vs[0]))
            return
        done = self._batch("update_batch", _lib().bpf_update_batch, ks, vs)
        for key, value in zip(ks[done:], vs[done:], strict=True):
            self.update(_U32.pack(key), _U32.pack(value))

    def delete_u32_batch(self, keys: Iterable[int]) -> None:
        """Deletes keys, tolerating keys already gone.

        One missing key fails a whole delete batch (ENOENT) after its first `count` elements,
        so after ENOENT the rest goes one by one, each tolerating ENOENT.
        """
        ks = _u32_array(keys)
        done = self._batch("delete_batch", _lib().bpf_delete_batch, ks, None, tolerate_enoent=True)
        for key in ks[done:]:
            self.delete(_U32.pack(key))

    def _batch(
        self,
        what: str,
        func: Callable[..., int],
        keys: array.array[int],
        values: array.array[int] | None,
        *,
        tolerate_enoent: bool = False,
    ) -> int:
        """Runs a batch call; returns how many leading elements are done (all of them, or where
        it stopped for a reason the caller finishes one by one). Other failures raise."""
        if not keys:
            return 0
        count = ctypes.c_uint32(len(keys))
        args: list[Any] = [self.fd, _u32_buffer(keys)]
        if values is not None:
            args.append(_u32_buffer(values))
        try:
            _call(what, self.path, func, *args, ctypes.byref(count))
        except BpfError as exc:
            if exc.errno in _NO_BATCH:
                return 0  # count may be untouched: redo all (updates and deletes are idempotent)
            if exc.errno == errno_codes.ENOENT and tolerate_enoent:
                return min(count.value, len(keys))  # stopped at the missing key: the rest 1 by 1
            raise
        return len(keys)

    def items_u32(self) -> dict[int, int]:
        """The whole table: batch lookups, or key-by-key iteration where batches fail."""
        try:
            return self._lookup_u32_batch()
        except BpfError as exc:
            if exc.errno not in _NO_BATCH | {errno_codes.ENOSPC}:
                raise
        return self._iterate_u32()

    def _lookup_u32_batch(self) -> dict[int, int]:
        capacity = self.spec.max_entries
        keys, values = (ctypes.c_uint32 * capacity)(), (ctypes.c_uint32 * capacity)()
        # The hash map's batch cursor is a u32 bucket index; in and out may share a buffer
        # (the kernel reads in_batch before it writes out_batch).
        cursor, count, total = ctypes.c_uint32(0), ctypes.c_uint32(0), 0
        lookup_batch = _lib().bpf_lookup_batch
        while total < capacity:
            count.value = capacity - total
            try:
                _call(
                    "lookup_batch",
                    self.path,
                    lookup_batch,
                    self.fd,
                    ctypes.byref(cursor) if total else None,
                    ctypes.byref(cursor),
                    ctypes.byref(keys, 4 * total),
                    ctypes.byref(values, 4 * total),
                    ctypes.byref(count),
                )
            except BpfError as exc:
                if exc.errno != errno_codes.ENOENT:  # ENOENT: walked past the last bucket
                    raise
                total += count.value
                break
            if count.value == 0:  # no progress: let the caller iterate instead
                raise _error("lookup_batch", self.path, errno_codes.ENOSPC) from None
            total += count.value
        return dict(zip(keys[:total], values[:total], strict=True))

    def _iterate_u32(self) -> dict[int, int]:
        """get_next_key walk; keys deleted meanwhile are skipped (bounded: never loops)."""
        table: dict[int, int] = {}
        key, next_key = ctypes.c_uint32(0), ctypes.c_uint32(0)
        get_next = _lib().bpf_get_next_key
        first = True
        for _ in range(2 * self.spec.max_entries + 1):
            try:
                start = None if first else ctypes.byref(key)
                _call("get_next_key", self.path, get_next, self.fd, start, ctypes.byref(next_key))
            except BpfError as exc:
                if exc.errno == errno_codes.ENOENT:
                    break
                raise
            first, key.value = False, next_key.value
            value = self.lookup(_U32.pack(key.value))
            if value is not None:
                table[key.value] = _U32.unpack(value)[0]
        return table


def _u32_array(items: Iterable[int]) -> array.array[int]:
    """A C u32 array built in one C loop (or the u32 array given, as it is); out-of-range
    values raise OverflowError."""
    if isinstance(items, array.array) and items.typecode == "I":
        return items
    values = array.array("I", items)
    if values.itemsize != 4:  # pragma: no cover - every Linux ABI we target has 4-byte int
        raise RuntimeError("array('I') is not 32 bits on this platform")
    return values


def _u32_buffer(values: array.array[int]) -> ctypes.Array[ctypes.c_uint32]:
    """A ctypes view of the array's memory (no copy), passable as void *."""
    return (ctypes.c_uint32 * len(values)).from_buffer(values)


# --- the BPF filesystem and directory locks (no bcc needed) ----------------------------------


def is_bpffs(path: str) -> bool:
    """True if path (or, if it does not exist yet, its nearest existing parent) is on bpffs."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    return _statfs_type(probe) == BPF_FS_MAGIC


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _statfs_type(path: str) -> int:
    """statfs(2) f_type. Python has no os.statfs; f_type is the first field of struct statfs,
    a native long on 64-bit Linux (an int on a few 32-bit ABIs: masked to 32 bits below)."""
    libc = _libc()
    buf = ctypes.create_string_buffer(512)  # larger than struct statfs on every Linux ABI
    if libc.statfs(path.encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def lock_directory(path: str) -> int | None:
    """Takes an exclusive flock on directory `path` (created if missing) without waiting.

    Returns the fd holding the lock (close it to release), or None if another open file
    description holds it (another process, or another open in this one: flock locks belong to
    open file descriptions, not processes). The kernel drops the lock when its holder dies.
    Works on bpffs, where a directory can be opened and locked but a pinned map cannot be
    opened at all. Raises OSError for anything else.
    """
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@functools.cache
def possible_cpus() -> int:
    """How many CPUs per-CPU maps hold a value for (/sys/devices/system/cpu/possible, e.g.
    "0-3" or "0,2-5"; offline CPUs included, as the kernel counts them)."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as handle:
        text = handle.read().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def probe_map_create() -> None:
    """Creates and closes a 1-entry map: proves bcc loads and bpf() works (privileges)."""
    spec = MapSpec("probe", BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    os.close(create_map(spec, path="(probe map, not pinned)"))
