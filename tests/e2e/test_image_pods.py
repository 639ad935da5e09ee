"""End to end: the container image users deploy, run as the rendered DaemonSet runs it.

`make image` builds the Dockerfile (podman, chroot isolation, a debootstrapped bookworm base);
IMAGE names it. No OCI runtime can start it here, so lab.pods runs each pod from the image's
root filesystem (podman image mount) with exactly what the rendered pod spec says: command and
args, env with the Downward API filled, containerd's capabilities for uid 0, /proc, /sys
read-only, /dev, the volume mounts (the bpffs hostPath, the TLS Secret as files, the node's
kernel headers), the service-account token and ca.crt at the in-cluster paths, and a read-only
root filesystem.

The world around the pods is a cluster's: each pod in its own network namespace on a bridge
(lab.netns), the fake API server over HTTPS checking the bearer token at
KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT (so the in-cluster configuration is used for
real), the overlay's objects applied to it, a DNS server (dnsmasq) answering the headless
Service and redis-coordination under cluster.local, and /etc/resolv.conf and /etc/hosts written
as the kubelet writes them: no PEERS, no DNS_SERVER, no KUBECONFIG is added to the spec.

Checked per overlay (configmap, lease, redis; configmap with k8s/components/xdp):
- the pods elect one leader (the backend's record names it), the leader's source reads an
  opted-in Service from the API server, and every node's pinned map converges on it;
- the readiness and liveness probes answer SERVING as the kubelet runs them (grpc.health.v1 on
  the probe port, from the node, with the probe's timeout);
- a rolling update (SIGTERM to the leader's pod, a replacement on the same pins) never blanks
  that node's map, and the replacement takes the next change;
- with the xdp component, the pod compiles the program inside the image against the node's
  headers mounted where the spec mounts them, attaches it to the pod veth and drops packets to
  a service at 0.
And the image itself: `gossip-agent --help` and `env`, `python -c "import bcc"`, `bpftool
version`, no compiler or headers; its size and cold start (exec to SERVING) are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gossip_agent.core import services
from gossip_agent.dataplane import layout
from gossip_agent.system import bpfsys
from lab import certs, fakekube, netns, pods
from tests.conftest import require
from tests.e2e import test_netns_cluster as nc
from tests.e2e import test_xdp_component as xc
from tests.unit import test_manifests as manifests

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = "0.3.0"
IMAGE = os.environ.get("IMAGE", f"localhost/gossip-agent:{VERSION}")
PREFIX = "gaim"
BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-image"
NAMESPACE = "gossip-agent"
DOMAIN = "cluster.local"
API_PORT = 443
SERVICE = nc.ZERO  # the opted-in Service the leader's source publishes
START_DEADLINE = 90.0  # three agents importing grpc and the kubernetes client on 2 cores
CONVERGE_DEADLINE = 30.0
XDP_DEADLINE = 120.0  # three bcc compilations of the XDP program (3 s of CPU each) on 2 cores
IMAGE_BUDGET_MB = 750  # built: 696 MB; bcc (LLVM, libclang, ICU, z3) ~225, the venv ~213


# -- the image ------------------------------------------------------------------------------------


def require_image() -> None:
    require(shutil.which("podman") is not None, "podman (apt-get install podman)")
    present = subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode == 0
    require(present, f"the image {IMAGE} (make image)")


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, pods.ImageConfig]]:
    require_image()
    rootfs = pods.mount_image(IMAGE)
    try:
        yield rootfs, pods.inspect(IMAGE)
    finally:
        pods.unmount_image(IMAGE)


def in_image(rootfs: str, config: pods.ImageConfig, *argv: str) -> subprocess.CompletedProcess[str]:
    """Runs argv in the image with its own environment, root read-only, nothing mounted."""
    return subprocess.run(["chroot", rootfs, *argv], env=config.env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_image_runs_its_cli_imports_bcc_has_bpftool_and_no_build_tools(
    image: tuple[str, pods.ImageConfig],
) -> None:
    rootfs, config = image
    assert config.entrypoint == ("gossip-agent",) and config.cmd == ("run",), config
    assert config.user in ("0:0", "0", "root"), f"the image runs as {config.user!r}"
    helped = in_image(rootfs, config, "gossip-agent", "--help")
    assert helped.returncode == 0 and "run" in helped.stdout, helped
    listed = in_image(rootfs, config, "gossip-agent", "env")
    assert listed.returncode == 0 and "COORDINATION_BACKEND" in listed.stdout, listed
    imported = in_image(rootfs, config, "python", "-c", "import bcc, sys; print(bcc.__file__);"
                        "print(sys.prefix)")
    assert imported.returncode == 0, imported
    bcc_file, prefix = imported.stdout.split()
    assert prefix == "/opt/gossip-agent", f"python is not the agent's virtualenv: {prefix}"
    assert bcc_file.startswith("/opt/gossip-agent/system-bcc/bcc/"), bcc_file
    isolated = in_image(rootfs, config, "python", "-c", "import apt_pkg")
    assert isolated.returncode != 0, "the virtualenv sees Debian's dist-packages beyond bcc"
    bpftool = in_image(rootfs, config, "bpftool", "version")
    assert bpftool.returncode == 0 and "bpftool" in bpftool.stdout, bpftool
    for tool in ("gcc", "cc", "c++", "g++", "cpp", "clang", "make", "ld", "as", "pip", "pip3"):
        found = in_image(rootfs, config, "sh", "-c", f"command -v {tool}")
        assert found.returncode != 0, f"build tool {tool} in the image: {found.stdout.strip()}"
    packages = in_image(rootfs, config, "dpkg-query", "-W", "-f", "${Package}\n")
    # gcc-12-base stays: libgcc-s1 needs it, and it holds only documentation.
    built = [p for p in packages.stdout.split() if p in (
        "build-essential", "gcc", "cpp", "g++", "clang", "libc6-dev", "python3-dev",
        "python3-pip", "bpfcc-tools") or re.fullmatch(r"(gcc|cpp|g\+\+|clang)-\d+", p)
        or p.startswith(("linux-headers", "libclang-common"))]
    assert packages.returncode == 0 and built == [], f"build packages in the image: {built}"
    headers = list(pathlib.Path(rootfs, "usr/include").rglob("*.h"))
    assert headers == [], f"C headers in the image: {headers[:5]}"
    assert not pathlib.Path(rootfs, "root/.cache/pip").exists(), "a pip cache in the image"
    size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE],
                              capture_output=True, text=True, check=True).stdout)
    print(f"image {IMAGE}: {size / 1e6:.0f} MB")
    assert size < IMAGE_BUDGET_MB * 1e6, f"the image grew to {size / 1e6:.0f} MB"


# -- the world around the pods --------------------------------------------------------------------


class World:
    """Three nodes, the API server, DNS (and Redis), and the pods the DaemonSet puts there."""

    def __init__(self, objects: list[dict[str, Any]], tmp: pathlib.Path,
                 image: tuple[str, pods.ImageConfig]) -> None:
        self.objects, self.tmp = objects, tmp
        self.rootfs, self.config = image
        daemonset = manifests.one(objects, "DaemonSet")
        self.pod_spec = daemonset["spec"]["template"]["spec"]
        self.container = manifests.container(objects)
        self.host_network = bool(self.pod_spec.get("hostNetwork"))
        services = (nc.ZERO, nc.CONTROL) if self.host_network else ()
        self.cluster = netns.Cluster(3, prefix=PREFIX, log_dir=str(tmp / "logs"),
                                     bpffs_root=os.path.join(BPFFS_ROOT, uuid.uuid4().hex),
                                     services=services)
        self.kube: fakekube.FakeKube | None = None
        self.forwarder = netns.Forwarder()
        self.pods: dict[str, Pod] = {}
        self.token = secrets.token_urlsafe(32)

    def __enter__(self) -> World:
        self.cluster.__enter__()
        self.dns = self.cluster.add_host("dns")
        self.api = self.cluster.add_host("api")
        self.redis = self.cluster.add_host("redis")
        self._certificates()
        self._api_server()
        self._dns_server()
        self._redis_server()
        return self

    def __exit__(self, *exc: object) -> None:
        for pod in self.pods.values():
            print(f"--- pod {pod.name} on {pod.node.name} log tail:")
            print(nc._tail(pod.log_path, lines=40))
            pod.kill()
        self.forwarder.close()
        if self.kube is not None:
            self.kube.close()
        self.cluster.close()
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS_ROOT)

    def _certificates(self) -> None:
        certificates = self.tmp / "certs"
        self.agent_ca = certs.authority(certificates / "agents")
        pod_ips = tuple(node.ip for node in self.cluster.nodes)
        self.agent_leaf = self.agent_ca.issue(certificates / "agents", "gossip-agent",
                                              ips=pod_ips)
        self.api_ca = certs.authority(certificates / "api", "kubernetes-ca")
        self.api_leaf = self.api_ca.issue(certificates / "api", "kube-apiserver",
                                          dns=("kubernetes.default.svc",), ips=(self.api.ip,))

    def _api_server(self) -> None:
        self.kube = fakekube.FakeKube(host=self.api.ip, port=API_PORT, token=self.token,
                                      tls=(str(self.api_leaf.cert), str(self.api_leaf.key)))
        netns.run_in(self.api.netns, self.kube.start)  # its socket on the cluster network
        order = {"Namespace": 0, "ServiceAccount": 1}
        known = {kind.kind for kind in fakekube.KINDS}
        for obj in sorted(self.objects, key=lambda o: order.get(o["kind"], 2)):
            if obj["kind"] in known:
                self.kube.create_object(obj)  # what `kubectl apply -k` leaves in a cluster

    def _dns_server(self) -> None:
        """dnsmasq as cluster DNS: the headless Service (every pod, ready or not), the Redis
        Service, the API; anything else under cluster.local is NXDOMAIN."""
        names = [(node.ip, f"gossip-agent.{NAMESPACE}.svc.{DOMAIN}") for node in self.cluster.nodes]
        names += [(self.redis.ip, f"redis-coordination.{NAMESPACE}.svc.{DOMAIN}"),
                  (self.api.ip, f"kubernetes.default.svc.{DOMAIN}")]
        hosts = self.tmp / "cluster-dns.hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for ip, name in names), encoding="ascii")
        self.cluster.spawn(self.dns.netns, [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", f"--addn-hosts={hosts}", f"--listen-address={self.dns.ip}",
            "--bind-interfaces", f"--local=/{DOMAIN}/", "--pid-file=", "--user=root",
        ], log_name="dnsmasq.log")

    def _redis_server(self) -> None:
        self.cluster.spawn(self.redis.netns, [
            "redis-server", "--bind", self.redis.ip, "--port", "6379", "--save", "",
            "--appendonly", "no", "--protected-mode", "no",
        ], log_name="redis.log")

    # -- pods -------------------------------------------------------------------------------------

    def links(self) -> dict[str, str]:
        """The service links the kubelet puts in every pod's env: the API, and each Service
        with a cluster IP in the pod's namespace (the fake server assigned them)."""
        assert self.kube is not None
        found = {"kubernetes": (self.api.ip, API_PORT)}
        for obj in self.kube.store.items(self.kube.kinds["services"], NAMESPACE):
            ip = obj["spec"].get("clusterIP")
            if ip and ip != "None":
                found[obj["metadata"]["name"]] = (ip, int(obj["spec"]["ports"][0]["port"]))
        env = pods.service_links(found)
        env["KUBERNETES_SERVICE_PORT_HTTPS"] = str(API_PORT)
        return env

    def start_pod(self, node: netns.Node) -> Pod:
        pod = Pod(self, node, name=f"gossip-agent-{secrets.token_hex(3)}")
        self.pods[pod.name] = pod
        pod.start()
        return pod

    def pod_on(self, node_name: str) -> Pod:
        (pod,) = [p for p in self.pods.values() if p.node.name == node_name and p.running]
        return pod

    def table(self, node: netns.Node) -> dict[int, int] | None:
        """The node's SERVICE_LIST as the kernel holds it, read from the node's bpffs."""
        path = os.path.join(node.pin_dir, "gossip-agent", layout.SERVICE_LIST)
        pinned = bpfsys.PinnedMap.open_existing(path, layout.service_list_spec(
            layout.DEFAULT_MAX_ENTRIES))
        if pinned is None:
            return None
        try:
            return pinned.items_u32()
        finally:
            pinned.close()

    def publish(self, replicas: int) -> None:
        """The opted-in Service and its EndpointSlice with `replicas` ready endpoints."""
        assert self.kube is not None
        name = "web"
        if self.kube.get_object("services", name) is None:
            self.kube.create_object({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "annotations": {
                    services.REFERENCE: f"deployment/{name}",
                    services.SCALE_DOWN_TIME: "3600"}},  # no scale-down during the test
                "spec": {"clusterIP": SERVICE, "ports": [{"port": nc.PORT, "protocol": "UDP"}]}})
        with contextlib.suppress(Exception):
            self.kube.delete_object("endpointslices", f"{name}-a")
        self.kube.create_object({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-a", "namespace": "default",
                         "labels": {services.SERVICE_NAME_LABEL: name}},
            "addressType": "IPv4", "ports": [{"port": nc.PORT}],
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": True}}
                          for i in range(replicas)]})

    def leader_record(self) -> str:
        """The holder the lease backend names ("" if none), read from the backend itself."""
        backend = manifests.pod_env(self.objects)["COORDINATION_BACKEND"]
        assert self.kube is not None
        if backend == "redis":
            done = subprocess.run(["nsenter", f"--net={netns.NETNS_DIR}/{self.redis.netns}",
                                   "redis-cli", "-h", self.redis.ip, "GET", "ebpf:leader"],
                                  capture_output=True, text=True, timeout=10, check=False)
            return done.stdout.strip()
        if backend == "lease":
            lease = self.kube.get_object("leases", "gossip-agent", NAMESPACE)
            return str((lease or {}).get("spec", {}).get("holderIdentity") or "")
        configmap = self.kube.get_object("configmaps", "ebpf-service-list", NAMESPACE)
        annotation = ((configmap or {}).get("metadata", {}).get("annotations") or {}).get(
            "control-plane.alpha.kubernetes.io/leader", "")
        return annotation.split('"holderIdentity":"', 1)[-1].split('"', 1)[0] if annotation else ""


class Pod:
    """One pod of the DaemonSet on one node, as the kubelet would start it."""

    def __init__(self, world: World, node: netns.Node, *, name: str) -> None:
        self.world, self.node, self.name = world, node, name
        self.state = world.tmp / "pods" / name
        self.log_path = os.path.join(world.cluster.log_dir, f"{name}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.facts = pods.PodFacts(
            name=name, namespace=NAMESPACE, node_name=node.name, pod_ip=node.ip,
            host_ip=node.ip, service_account=world.pod_spec.get("serviceAccountName", "default"))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        world, container = self.world, self.world.container
        self.state.mkdir(parents=True)
        env = pods.container_env(container, self.facts, image=world.config, links=world.links())
        context = container.get("securityContext") or {}
        wanted = pods.capability_names(container)
        granted = [c for c in wanted if c not in xc.CAPABILITIES or xc.machine_grants(c)]
        if granted != wanted:
            print(f"{self.name}: this machine cannot grant {sorted(set(wanted) - set(granted))}")
        spec = pods.Spec(
            rootfs=world.rootfs, state_dir=str(self.state),
            argv=pods.command_line(container, world.config, env), env=env,
            workdir=container.get("workingDir") or world.config.workdir,
            hostname=self.node.name if world.host_network else self.name,
            capabilities=granted,
            no_new_privs=context.get("allowPrivilegeEscalation") is False,
            read_only_root=bool(context.get("readOnlyRootFilesystem")),
            mounts=self._mounts(), pid_file=str(self.state / "pid"))
        command = pods.launcher(spec.write(str(self.state / "spec.json")),
                                netns_path=f"{netns.NETNS_DIR}/{self.node.netns}")
        self.started = time.monotonic()
        self.process = world.cluster.spawn(self.node.netns, command, log_name=f"{self.name}.log",
                                           env={"PYTHONPATH": str(ROOT / "tools")})

    def _mounts(self) -> list[pods.Mount]:
        volumes = {v["name"]: v for v in self.world.pod_spec.get("volumes") or []}
        mounts = []
        for mount in self.world.container.get("volumeMounts") or []:
            source = self._volume(volumes[mount["name"]])
            mounts.append(pods.Mount(source, mount["mountPath"], bool(mount.get("readOnly"))))
        mounts.append(pods.Mount(self._service_account(), pods.SERVICE_ACCOUNT_DIR, True))
        read_only = bool((self.world.container.get("securityContext") or {}).get(
            "readOnlyRootFilesystem"))
        for name, text in self._etc().items():
            path = self.state / f"etc-{name}"
            path.write_text(text, encoding="ascii")
            mounts.append(pods.Mount(str(path), f"/etc/{name}", read_only))
        return mounts

    def _volume(self, volume: dict[str, Any]) -> str:
        if "hostPath" in volume:
            path = volume["hostPath"]["path"]
            if path == "/sys/fs/bpf":  # this node's bpffs: a directory of the machine's
                os.makedirs(self.node.pin_dir, exist_ok=True)
                return self.node.pin_dir
            return str(path)
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "gossip-agent-tls", volume
            mode = int(volume["secret"].get("defaultMode", 0o644))
            files = {"tls.crt": self.world.agent_leaf.cert.read_bytes(),
                     "tls.key": self.world.agent_leaf.key.read_bytes(),
                     "ca.crt": self.world.agent_ca.cert.read_bytes()}
            return atomic_writer_dir(self.state / f"volume-{volume['name']}", files, mode)
        raise AssertionError(f"a volume this runtime does not provide: {volume}")

    def _service_account(self) -> str:
        """The projected kube-api-access volume the ServiceAccount admission adds."""
        files = {"token": self.world.token.encode(),
                 "ca.crt": self.world.api_ca.cert.read_bytes(),
                 "namespace": NAMESPACE.encode()}
        return atomic_writer_dir(self.state / "volume-kube-api-access", files, 0o644)

    def _etc(self) -> dict[str, str]:
        world = self.world
        policy = world.pod_spec.get("dnsPolicy", "ClusterFirst")
        assert policy == ("ClusterFirstWithHostNet" if world.host_network else "ClusterFirst")
        hosts = (pathlib.Path("/etc/hosts").read_text(encoding="utf-8") if world.host_network
                 else pods.kubelet_hosts(pod_ip=self.node.ip, hostname=self.name))
        return {"hosts": hosts, "hostname": f"{self.name}\n",
                "resolv.conf": pods.kubelet_resolv_conf(namespace=NAMESPACE,
                                                        nameserver=world.dns.ip)}

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """`kubectl exec POD -- argv`: in the pod's namespaces and root, with its env."""
        assert self.pid is not None
        env = pods.container_env(self.world.container, self.facts, image=self.world.config,
                                 links=self.world.links())
        return subprocess.run(["nsenter", f"--target={self.pid}", "--mount", "--uts", "--ipc",
                               "--net", "--pid", "--root", "--wd", "--", *argv],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    @property
    def pid(self) -> int | None:
        return pods.read_pid(str(self.state / "pid"))

    def terminate(self) -> int:
        """What the kubelet does to delete the pod: SIGTERM to its PID 1, SIGKILL after
        terminationGracePeriodSeconds; returns the container's exit status."""
        assert self.process is not None and self.pid is not None
        os.kill(self.pid, signal.SIGTERM)
        grace = float(self.world.pod_spec.get("terminationGracePeriodSeconds", 30))
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        pid = self.pid
        if self.running and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)

    async def probe(self, kind: str) -> str:
        """The container's readinessProbe / livenessProbe as the kubelet runs it: a
        grpc.health.v1 Check to the pod IP from the node, with the probe's timeout."""
        spec = self.world.container[f"{kind}Probe"]["grpc"]
        timeout = float(self.world.container[f"{kind}Probe"].get("timeoutSeconds", 1))
        address = self.world.forwarder.open(netns=self.node.netns, host=self.node.ip,
                                            port=int(spec["port"]))
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(
                    service=spec.get("service", "")), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def atomic_writer_dir(directory: pathlib.Path, files: dict[str, bytes], mode: int) -> str:
    """A Secret or projected volume as the kubelet's AtomicWriter lays it out: the files in a
    timestamped directory, `..data` pointing at it, and each name a link through `..data`."""
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.000000001")
    (directory / stamp).mkdir(parents=True)
    for name, content in files.items():
        path = directory / stamp / name
        path.write_bytes(content)
        path.chmod(mode)
        (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data").symlink_to(stamp)
    return str(directory)


# -- the tests ------------------------------------------------------------------------------------


def require_world() -> None:
    nc.require_netns_cluster()
    for tool in ("dnsmasq", "redis-server", "redis-cli", "unshare"):
        require(shutil.which(tool) is not None, f"{tool} (tools/setup_system.sh installs it)")
    require_image()


@pytest.fixture
def world_of(tmp_path: pathlib.Path, image: tuple[str, pods.ImageConfig]
             ) -> Iterator[Callable[[list[dict[str, Any]]], World]]:
    require_world()
    netns.sweep_stale(PREFIX)
    made: list[World] = []

    def make(objects: list[dict[str, Any]]) -> World:
        world = World(objects, tmp_path, image)
        made.append(world)
        return world.__enter__()

    try:
        yield make
    finally:
        for world in made:
            world.__exit__()


async def all_probes_serving(world: World, kind: str) -> bool:
    pods_now = [p for p in world.pods.values() if p.running]
    answers = await asyncio.gather(*(p.probe(kind) for p in pods_now))
    return all(a == "SERVING" for a in answers)


async def converged(world: World, replicas: int) -> bool:
    return all(world.table(node) == {nc.key(SERVICE): replicas} for node in world.cluster.nodes)


async def cold_start(pod: Pod) -> float:
    """Seconds from exec to the liveness service SERVING on the probe port."""
    await nc.until(f"{pod.name} serving its probe port",
                   lambda: _serving(pod), timeout=START_DEADLINE)
    return time.monotonic() - pod.started


async def _serving(pod: Pod) -> bool:
    assert pod.running, f"{pod.name} exited: {nc._tail(pod.log_path)}"
    return await pod.probe("liveness") == "SERVING"


@contextlib.contextmanager
def never_blank(world: World, node: netns.Node) -> Iterator[list[int]]:
    """Reads the node's pinned map every 10 ms on a thread; fails if it is ever missing or
    lacks the service. Yields the list of sample counts (one item: how many were read)."""
    failures: list[str] = []
    count = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            table = world.table(node)
            count[0] += 1
            if not table or nc.key(SERVICE) not in table:
                failures.append(f"sample {count[0]}: {table}")
            time.sleep(0.01)

    thread = threading.Thread(target=sample, name="never-blank")
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join()
    assert not failures, f"{node.name}'s map went blank during the update: {failures[:3]}"


async def elect_gossip_converge_and_roll(world: World) -> None:
    world.publish(replicas=2)
    first = world.start_pod(world.cluster.nodes[0])
    print(f"cold start (exec to SERVING) of {first.name}: {await cold_start(first):.2f} s")
    for node in world.cluster.nodes[1:]:
        world.start_pod(node)
    for pod in list(world.pods.values()):
        await cold_start(pod)
    await nc.until("one leader in the backend's record", lambda: world.leader_record(),
                   timeout=START_DEADLINE)
    await nc.until(f"{SERVICE}=2 in every node's pinned map", lambda: converged(world, 2),
                   timeout=CONVERGE_DEADLINE)
    await nc.until("every readiness probe SERVING", lambda: all_probes_serving(world, "readiness"),
                   timeout=CONVERGE_DEADLINE)
    assert await all_probes_serving(world, "liveness")
    holder = world.leader_record()
    node_name = holder.split("#", 1)[0]
    assert node_name in {n.name for n in world.cluster.nodes}, holder
    await walkthrough_commands(world.pod_on(world.cluster.nodes[-1].name), leader=node_name)

    leader = world.pod_on(node_name)  # the rolling update takes the leader's pod first
    with never_blank(world, leader.node) as samples:
        assert leader.terminate() == 0, nc._tail(leader.log_path)
        replacement = world.start_pod(leader.node)
        await cold_start(replacement)
        await nc.until(f"{replacement.name} ready", lambda: _ready(replacement),
                       timeout=CONVERGE_DEADLINE)
    assert samples[0] > 10, "the map was hardly sampled during the update"
    await nc.until("a new leader in the backend's record",
                   lambda: world.leader_record() not in ("", holder), timeout=START_DEADLINE)
    world.publish(replicas=3)
    await nc.until(f"{SERVICE}=3 in every node's map, the replacement's too",
                   lambda: converged(world, 3), timeout=CONVERGE_DEADLINE)


TLS_FLAGS = ("--cacert", "/etc/gossip-agent/tls/ca.crt", "--cert", "/etc/gossip-agent/tls/tls.crt",
             "--key", "/etc/gossip-agent/tls/tls.key")


async def walkthrough_commands(pod: Pod, *, leader: str) -> None:
    """docs/kubernetes.md's `kubectl exec ds/gossip-agent -- ...` commands, in a pod."""
    shown = await asyncio.to_thread(pod.exec, "gossip-agent", "leader", *TLS_FLAGS)
    assert shown.returncode == 0 and leader in shown.stdout, shown
    state = await asyncio.to_thread(pod.exec, "gossip-agent", "state", *TLS_FLAGS)
    assert state.returncode == 0 and SERVICE in state.stdout, state
    dumped = await asyncio.to_thread(pod.exec, "bpftool", "map", "dump", "pinned",
                                     "/sys/fs/bpf/gossip-agent/SERVICE_LIST")
    assert dumped.returncode == 0 and "Found 1 element" in dumped.stdout, dumped


async def _ready(pod: Pod) -> bool:
    return await pod.probe("readiness") == "SERVING"


@pytest.mark.parametrize("overlay", ["configmap", "lease", "redis"])
async def test_the_overlays_pods_from_the_image_elect_converge_and_roll_without_blanking(
    world_of: Callable[[list[dict[str, Any]]], World], overlay: str,
) -> None:
    objects = manifests.rendered(overlay)
    env = manifests.pod_env(objects)
    for added in ("PEERS", "DNS_SERVER", "KUBECONFIG", "PROFILE"):
        assert added not in env, f"the {overlay} overlay sets {added}: the test would not be real"
    world = world_of(objects)
    await elect_gossip_converge_and_roll(world)
    unauthorized = world.kube.request_count(verb="unauthorized") if world.kube else 0
    assert unauthorized == 0, "an agent called the API server without the pod's token"


async def test_the_xdp_components_pods_compile_and_attach_inside_the_image(
    world_of: Callable[[list[dict[str, Any]]], World],
) -> None:
    objects = manifests.with_component("configmap", "xdp")
    container = manifests.container(objects)
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/lib/modules", "/usr/src"} <= mounted, "the spec no longer mounts node headers"
    world = world_of(objects)
    world.publish(replicas=0)
    for node in world.cluster.nodes:
        world.start_pod(node)
    for pod in list(world.pods.values()):
        await cold_start(pod)
    await nc.until(f"{SERVICE}=0 in every node's pinned map", lambda: converged(world, 0),
                   timeout=XDP_DEADLINE)
    for node in world.cluster.nodes:
        await nc.until(f"the XDP program on {node.name}'s {node.veth}",
                       lambda node=node: xdp_attached(node), timeout=XDP_DEADLINE)
        assert nc.probe(world.cluster, node) == 0, f"{node.name} let a packet to 0 pass"
    for pod in world.pods.values():
        peak = peak_memory(pod)
        print(f"{pod.name}: peak RSS {peak / 2**20:.0f} MiB after compiling the program")
        limit = world.container["resources"]["limits"]["memory"]
        assert limit.endswith("Mi") and peak < int(limit[:-2]) * 2**20, (peak, limit)


def xdp_attached(node: netns.Node) -> bool:
    shown = netns.ip(node.netns, "-d", "link", "show", "dev", node.veth).stdout
    return "prog/xdp" in shown


def peak_memory(pod: Pod) -> int:
    assert pod.pid is not None
    with open(f"/proc/{pod.pid}/status", encoding="ascii") as status:
        (line,) = [x for x in status if x.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024
