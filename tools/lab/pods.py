"""Pods from a container image, run as the kubelet and containerd would run them, on a machine
where no OCI runtime can start a container (podman run is refused: setrlimit).

What a pod gets, read from the rendered pod spec and the image's own configuration:
- argv: the spec's command, else the image's ENTRYPOINT; the spec's args, else the image's CMD
  (only when command is unset too), with $(VAR) references expanded as the kubelet does.
- env: the image's ENV, then the service links of the pod's namespace (KUBERNETES_SERVICE_HOST
  and friends), then the container's env in order, with Downward API fields filled in and
  $(VAR) expanded against what precedes it.
- capabilities: containerd's default set, minus `drop` (ALL empties it), plus `add`; for uid 0
  the bounding, permitted and effective sets are exactly that, inheritable and ambient empty;
  no_new_privs when allowPrivilegeEscalation is false.
- mounts, in a private mount namespace: the image's root filesystem (read-only lower layer of
  an overlay, so a pod never writes into the image), /proc (fresh, for the pod's own PID
  namespace, with containerd's masked and read-only paths), /sys (read-only), /dev (tmpfs with
  the standard nodes, devpts, shm, mqueue), the termination log, /etc/hosts, /etc/resolv.conf,
  /etc/hostname (written by the caller as the kubelet writes them), and the volume mounts, each
  at its mountPath from the source the caller maps its volume to; then the root is remounted
  read-only if readOnlyRootFilesystem says so.
- a PID namespace (the command is its PID 1, as in a container), UTS (hostname) and IPC
  namespaces, inside the network namespace the caller names.

Not reproduced: cgroups (resource limits), seccomp and AppArmor profiles, user namespaces, and
the kubelet's own restarts (a test starts a replacement itself).

The runtime step runs as `nsenter --net=<netns> -- unshare --mount --pid --uts --ipc --fork
--kill-child -- python -m lab.pods SPEC.json`: this module's init() (stdlib and ctypes only)
builds the mounts, chroots, cuts the capabilities and execs the command; before mounting the
pod's /proc it writes its host PID to the spec's pid_file, so the caller can signal the pod's
PID 1 as the kubelet does (SIGTERM, then SIGKILL after the grace period).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

JSON = Any

# Linux capability numbers (linux/capability.h), by the names Kubernetes manifests use.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
# containerd's default set for a container (oci.DefaultSpec / the CRI plugin), what `drop` and
# `add` modify.
CONTAINERD_DEFAULT = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
# containerd's (runc's) maskedPaths and readonlyPaths for a container that is not privileged.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# The kubelet's default terminationMessagePath.
TERMINATION_LOG = "/dev/termination-log"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


# -- the image ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """What a runtime reads from the image's configuration."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str


def inspect(image: str) -> ImageConfig:
    done = subprocess.run(["podman", "image", "inspect", image], capture_output=True,
                          text=True, timeout=60, check=True)
    (info,) = json.loads(done.stdout)
    config = info.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(entrypoint=tuple(config.get("Entrypoint") or ()),
                       cmd=tuple(config.get("Cmd") or ()), env=env,
                       workdir=config.get("WorkingDir") or "/", user=config.get("User") or "")


def mount_image(image: str) -> str:
    """The image's root filesystem (podman image mount); read it, never write it."""
    done = subprocess.run(["podman", "image", "mount", image], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


def unmount_image(image: str) -> None:
    subprocess.run(["podman", "image", "unmount", image], capture_output=True, timeout=120,
                   check=False)


# -- the pod spec, as the kubelet reads it --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodFacts:
    """What the Downward API can tell a pod about itself."""

    name: str
    namespace: str
    node_name: str
    pod_ip: str
    host_ip: str
    uid: str = "00000000-0000-0000-0000-000000000000"
    service_account: str = "default"

    def field(self, path: str) -> str:
        fields = {
            "metadata.name": self.name, "metadata.namespace": self.namespace,
            "metadata.uid": self.uid, "spec.nodeName": self.node_name,
            "spec.serviceAccountName": self.service_account, "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip, "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path not in fields:
            raise ValueError(f"fieldRef {path!r} is not a Downward API field this runtime fills")
        return fields[path]


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, known: Mapping[str, str]) -> str:
    """The kubelet's $(VAR) expansion: a defined VAR is replaced, an undefined one stays as
    written, and $$ is a literal $."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return known[name] if name in known else match.group(0)

    return _REFERENCE.sub(replace, text)


def service_links(services: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """The docker-link variables the kubelet sets for each Service with a cluster IP:
    name -> (ip, port) gives NAME_SERVICE_HOST, NAME_SERVICE_PORT, NAME_PORT and friends."""
    env: dict[str, str] = {}
    for name, (ip, port) in services.items():
        prefix = name.upper().replace("-", "_")
        url = f"tcp://{ip}:{port}"
        env.update({
            f"{prefix}_SERVICE_HOST": ip, f"{prefix}_SERVICE_PORT": str(port),
            f"{prefix}_PORT": url, f"{prefix}_PORT_{port}_TCP": url,
            f"{prefix}_PORT_{port}_TCP_PROTO": "tcp", f"{prefix}_PORT_{port}_TCP_PORT": str(port),
            f"{prefix}_PORT_{port}_TCP_ADDR": ip,
        })
    return env


def container_env(container: JSON, facts: PodFacts, *, image: ImageConfig,
                  links: Mapping[str, str]) -> dict[str, str]:
    """The process environment: image ENV < service links < the container's env, in order."""
    env = dict(image.env)
    known = dict(links)
    for item in container.get("env") or []:
        if "value" in item or "valueFrom" not in item:
            value = expand(item.get("value", ""), known)
        else:
            source = item["valueFrom"]
            if "fieldRef" not in source:
                raise ValueError(f"env {item['name']}: only fieldRef sources are filled here")
            value = facts.field(source["fieldRef"]["fieldPath"])
        known[item["name"]] = value
    env.update(known)
    return env


def command_line(container: JSON, image: ImageConfig, env: Mapping[str, str]) -> list[str]:
    """command/args as the runtime combines them with ENTRYPOINT/CMD."""
    if container.get("command"):
        command = list(container["command"])
        args = list(container.get("args") or [])
    else:
        command = list(image.entrypoint)
        args = list(container["args"]) if container.get("args") else list(image.cmd)
    return [expand(part, env) for part in command + args]


def capability_names(container: JSON) -> list[str]:
    """The sets containerd gives the container's uid-0 process (bounding = permitted =
    effective), from securityContext.capabilities."""
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        return sorted(CAPABILITIES)
    spec = context.get("capabilities") or {}
    drop = {c.upper().removeprefix("CAP_") for c in spec.get("drop") or []}
    add = {c.upper().removeprefix("CAP_") for c in spec.get("add") or []}
    kept = set() if "ALL" in drop else set(CONTAINERD_DEFAULT) - drop
    kept |= set(CAPABILITIES) if "ALL" in add else add
    return sorted(kept)


def kubelet_hosts(*, pod_ip: str, hostname: str) -> str:
    """/etc/hosts as the kubelet writes it for a pod off the host network."""
    return ("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
            "fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n"
            f"{pod_ip}\t{hostname}\n")


def kubelet_resolv_conf(*, namespace: str, nameserver: str,
                        cluster_domain: str = "cluster.local") -> str:
    """/etc/resolv.conf as the kubelet writes it for dnsPolicy ClusterFirst (and
    ClusterFirstWithHostNet on the host network)."""
    return (f"search {namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}\n"
            f"nameserver {nameserver}\noptions ndots:5\n")


# -- the runtime spec handed to init() ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str  # a host path: a directory, or a file for file mounts
    target: str  # the path in the container
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class Spec:
    rootfs: str  # the image's root filesystem (read-only lower layer)
    state_dir: str  # the pod's own directory: overlay upper/work, the merged root, files
    argv: list[str]
    env: dict[str, str]
    workdir: str
    hostname: str
    capabilities: list[str]
    no_new_privs: bool
    read_only_root: bool
    mounts: list[Mount]
    pid_file: str

    def write(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(dataclasses.asdict(self), handle, indent=1)
        return path

    @classmethod
    def read(cls, path: str) -> Spec:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        raw["mounts"] = [Mount(**m) for m in raw["mounts"]]
        return cls(**raw)


def launcher(spec_path: str, *, netns_path: str) -> list[str]:
    """The command that runs the pod described in spec_path inside the network namespace."""
    return ["nsenter", f"--net={netns_path}", "--",
            "unshare", "--mount", "--pid", "--uts", "--ipc", "--fork", "--kill-child",
            "--propagation", "private", "--",
            sys.executable, "-m", "lab.pods", spec_path]


def read_pid(pid_file: str) -> int | None:
    """The pod's PID 1 as the host sees it, once init() wrote it."""
    with contextlib.suppress(OSError, ValueError), open(pid_file, encoding="ascii") as handle:
        return int(handle.read().strip())
    return None


# -- init: inside the new namespaces (stdlib and ctypes only) -------------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
           data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None),
           f"mount {source} on {target} ({fstype or 'bind'})")


def _bind(source: str, target: str, *, read_only: bool) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _inside(root: str, path: str) -> str:
    """root + path with every symlink on the way resolved inside root (Debian's /var/run is
    a link to /run: followed naively it would lead out to the host's /run)."""
    parts = [p for p in path.split("/") if p]
    current = ""
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.rsplit("/", 1)[0]
            continue
        candidate = f"{current}/{part}"
        if os.path.islink(root + candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many links under {root} resolving {path}")
            target = os.readlink(root + candidate)
            if target.startswith("/"):
                current = ""
            parts = [p for p in target.split("/") if p] + parts
            continue
        current = candidate
    return root + (current or "/")


def _ensure(path: str, *, is_file: bool) -> None:
    if is_file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()  # noqa: SIM115 - an empty mount point
    else:
        os.makedirs(path, exist_ok=True)


def _root_overlay(spec: Spec) -> str:
    # A tmpfs under the state directory: the pod's writes live (and die) with its namespace.
    scratch = os.path.join(spec.state_dir, "rw")
    os.makedirs(scratch, exist_ok=True)
    _mount("tmpfs", scratch, "tmpfs", 0, "mode=0755")
    for name in ("upper", "work"):
        os.makedirs(os.path.join(scratch, name))
    root = os.path.join(spec.state_dir, "root")
    os.makedirs(root, exist_ok=True)
    _mount("overlay", root, "overlay", 0,
           f"lowerdir={spec.rootfs},upperdir={scratch}/upper,workdir={scratch}/work")
    return root


def _proc_and_sys(root: str) -> None:
    _ensure(root + "/proc", is_file=False)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _ensure(root + "/sys", is_file=False)
    _mount("sysfs", root + "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    for path in MASKED_PATHS:
        target = root + path
        if os.path.isdir(target):
            _mount("tmpfs", target, "tmpfs", MS_RDONLY)
        elif os.path.exists(target):
            _mount("/dev/null", target, None, MS_BIND)
    for path in READONLY_PATHS:
        if os.path.exists(root + path):
            _bind(root + path, root + path, read_only=True)


_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
            "urandom": (1, 9), "tty": (5, 0)}


def _dev(root: str, spec: Spec) -> None:
    dev = root + "/dev"
    _ensure(dev, is_file=False)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name, (major, minor) in _DEVICES.items():
        path = f"{dev}/{name}"
        try:
            os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
            os.chmod(path, 0o666)
        except PermissionError:  # no CAP_MKNOD here: bind the host's node, as rootless runc
            _ensure(path, is_file=True)
            _mount(f"/dev/{name}", path, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, f"{dev}/{name}")
    for name, fstype, data in (("pts", "devpts", "newinstance,ptmxmode=0666,mode=0620"),
                               ("shm", "tmpfs", "mode=1777,size=65536k"),
                               ("mqueue", "mqueue", None)):
        os.makedirs(f"{dev}/{name}")
        _mount(fstype, f"{dev}/{name}", fstype, MS_NOSUID | MS_NOEXEC, data)
    termination = os.path.join(spec.state_dir, "termination-log")
    open(termination, "a").close()  # noqa: SIM115
    _ensure(root + TERMINATION_LOG, is_file=True)
    _mount(termination, root + TERMINATION_LOG, None, MS_BIND)


def _capabilities(names: Sequence[str], *, no_new_privs: bool) -> None:
    keep = {CAPABILITIES[n] for n in names}
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
        last = int(handle.read())
    for number in range(last + 1):
        if number not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), f"drop capability {number}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    mask = sum(1 << n for n in keep)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0,
                                 mask >> 32, mask >> 32, 0)  # effective, permitted, inheritable
    _check(_libc.capset(header, data), "capset")
    if no_new_privs:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def init(spec: Spec) -> None:
    """Runs as PID 1 of the pod's PID namespace; never returns (exec), raises on failure."""
    with open(spec.pid_file, "w", encoding="ascii") as handle:
        handle.write(os.readlink("/proc/self"))  # the host's /proc: the host PID
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = _root_overlay(spec)
    targets = [_inside(root, mount.target) for mount in spec.mounts]
    for mount, target in zip(spec.mounts, targets, strict=True):
        _ensure(target, is_file=os.path.isfile(mount.source))
    _proc_and_sys(root)  # before the volumes: /sys/fs/bpf goes on top of the new /sys
    _dev(root, spec)
    for mount, target in zip(spec.mounts, targets, strict=True):
        _bind(mount.source, target, read_only=mount.read_only)
    if spec.read_only_root:
        _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    _check(_libc.sethostname(spec.hostname.encode(), len(spec.hostname)), "sethostname")
    os.chroot(root)
    os.chdir(spec.workdir or "/")
    _capabilities(spec.capabilities, no_new_privs=spec.no_new_privs)
    os.execvpe(spec.argv[0], spec.argv, spec.env)


def main() -> None:
    try:
        init(Spec.read(sys.argv[1]))
    except Exception as exc:  # the pod's log says why it never started, as a runtime's does
        print(f"lab.pods: cannot start the container: {exc}", file=sys.stderr, flush=True)
        sys.exit(128)


if __name__ == "__main__":
    main()
