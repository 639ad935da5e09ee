"""End to end: a rolling update from 0.1 (dotted-string reports) to this release (fixed32,
delta summaries), with both kinds of agent side by side in network namespaces, real XDP and the
fake Kubernetes API server, as a DaemonSet update leaves them for a while.

The 0.1 agent runs the code of the last commit before the report layout changed, taken from
the repository's history with `git archive` (so the test needs a clone with history).

Checked, in both directions, with the scale-to-zero loop that reports feed:
- an older leader with newer nodes: a newer node's scale-up request reaches it (the node falls
  back to unary Report calls when ReportStream is UNIMPLEMENTED, and to the older layout when
  the leader's acknowledgement lacks `compact`), traffic through
  a newer node keeps the service up, and exactly one scale-down follows when it stops;
- a newer leader with an older node: the older node's scale-up request reaches it, traffic
  through the older node ALONE keeps the service up (the leader reads its whole summaries), and
  exactly one scale-down follows when it stops, on all three nodes' facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gossip_agent.v1 import gossip_pb2 as pb
from lab import fakekube, localcluster, netns
from tests.conftest import require
from tests.e2e import test_netns_cluster as nc
from tests.e2e import test_scaling_netns as sc

pytestmark = pytest.mark.e2e

# The last commit of 0.1: its agents send NodeReport with dotted strings in fields 4 and 5.
RELEASE_0_1 = "5d9157478d6d93b806df1f7fdbc40a9e71ce28cc"
REPO = Path(__file__).resolve().parents[2]


def release_tree(commit: str, into: Path) -> str:
    """The code of `commit` (gossip_agent/ and bpf/), extracted from git into `into`."""
    if not (REPO / ".git").exists():
        require("git history", False, f"{REPO} is not a git clone: the rolling-update test "
                "runs the 0.1 agent from the repository's history")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit,
                              "gossip_agent", "bpf"], capture_output=True, check=False)
    if archive.returncode != 0:
        require("git history", False, f"git archive {commit[:12]} failed (a shallow clone?): "
                f"{archive.stderr.decode(errors='replace').strip()}")
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[netns.Cluster, fakekube.FakeKube, str]]:
    old = release_tree(RELEASE_0_1, tmp_path / "release-0.1")
    for cluster, kube in sc.make_world(tmp_path, nodes=3, env=sc.ENV):
        yield cluster, kube, old


async def leader_of(nodes: list[netns.Node], cluster: netns.Cluster) -> netns.Node:
    _, reply = await localcluster.find_leader([n.api_address for n in nodes],
                                              timeout=nc.START_DEADLINE)
    return cluster.node(reply.leader_node)


async def holds_lease(node: netns.Node) -> bool:
    """The lease record names the node (it publishes only once peers answer its digests)."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        reply = await localcluster.call(node.api_address, "GetLeader", pb.GetLeaderRequest())
        assert isinstance(reply, pb.GetLeaderResponse)
        return reply.holder.startswith(f"{node.name}#")
    return False


async def serving(node: netns.Node) -> bool:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await localcluster.call(node.api_address, "GetState", pb.GetStateRequest())
        return True
    return False


async def one_wake_and_one_sleep(cluster: netns.Cluster, kube: fakekube.FakeKube, *,
                                 waker: netns.Node, sender: netns.Node, patches: int) -> None:
    """web is at 0: a burst through `waker` scales it up once; traffic through `sender` only
    keeps it up past twice its idle time; when it stops, it goes down exactly once."""
    await nc.tables_are(cluster, {nc.key(nc.ZERO): 0}, what=f"{nc.ZERO}=0 in every node's map",
                        timeout=nc.CONVERGE_DEADLINE)
    cluster.send_from_pod(waker, nc.ZERO, port=nc.PORT, count=20)
    await nc.until(f"web scaled up on {waker.name}'s request", lambda: sc.replicas(kube) == 1,
                   timeout=sc.SCALE_DEADLINE)
    assert sc.scale_patches(kube) == patches + 1, "more than one scale-up for one burst"
    await nc.tables_are(cluster, {nc.key(nc.ZERO): 1}, what=f"{nc.ZERO}=1 in every node's map",
                        timeout=nc.CONVERGE_DEADLINE)
    await sc.keep_sending(cluster, sender, seconds=2 * sc.IDLE + 2)
    assert sc.replicas(kube) == 1, f"scaled down while {sender.name} was sending"
    stopped = time.monotonic()
    await nc.until("web scaled down", lambda: sc.replicas(kube) == 0, timeout=sc.SCALE_DEADLINE)
    assert time.monotonic() - stopped >= sc.IDLE - 0.5
    await asyncio.sleep(1.0)  # a few more rounds: nothing more is written
    assert sc.scale_patches(kube) == patches + 2


async def test_old_and_new_agents_side_by_side_wake_keep_up_and_scale_down_in_both_directions(
    world: tuple[netns.Cluster, fakekube.FakeKube, str],
) -> None:
    cluster, kube, old_tree = world
    old, new = cluster.nodes[0], cluster.nodes[1:]
    for obj in sc.objects(replicas=0):
        kube.create_object(obj)
    cluster.start_agent(old, tree=old_tree)  # alone first: the 0.1 agent takes the lease
    await nc.until(f"{old.name}'s 0.1 agent holding the lease", lambda: holds_lease(old),
                   timeout=nc.START_DEADLINE)
    cluster.start(new)  # its office opens once they answer its digest round
    leader, _ = await nc.enforcing(cluster)
    assert leader is old
    async with sc.endpoints_following(kube, ("web",)):
        # An older leader, newer nodes: they wake and keep up the service through it.
        await one_wake_and_one_sleep(cluster, kube, waker=new[0], sender=new[1], patches=0)
        log = nc._tail(new[0].log_path, lines=2000)
        assert f"leader {old.name} predates 0.2" in log, log
        assert "has no ReportStream (before 0.2)" in log, log

        # A newer leader, an older node (the 0.1 agent restarted as a follower).
        assert cluster.kill_agent(old) == -signal.SIGKILL
        leader = await leader_of(new, cluster)
        cluster.start_agent(old, tree=old_tree)
        await nc.until(f"{old.name}'s 0.1 agent serving again", lambda: serving(old),
                       timeout=nc.START_DEADLINE)
        await one_wake_and_one_sleep(cluster, kube, waker=old, sender=old, patches=2)
    lines = [x for x in nc._tail(leader.log_path, lines=10_000).splitlines()
             if "scaled deployment/default/web from 1 to 0" in x]
    assert lines and "idle on all 3 live node(s)" in lines[-1], lines
