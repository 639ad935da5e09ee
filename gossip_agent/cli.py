"""The `gossip-agent` command.

  gossip-agent run [--listen-addr ...]          run an agent (flags mirror the env vars)
  gossip-agent state|peers|leader --target H:P  query a running agent (--json for machines)
  gossip-agent set --target H:P IP REPLICAS [--name NS/NAME]
  gossip-agent delete --target H:P IP           writes go through any agent to the leader
  gossip-agent env [--markdown]                 every environment variable, documented
  gossip-agent detach [--bpf-pin-dir DIR]       remove the XDP program and pinned maps

Exit codes: 0 ok; 1 runtime failure (unreachable target: one line with the address and the gRPC
status; port or pin directory in use); 2 bad arguments or invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf import message as protobuf_message

from gossip_agent import config as config_mod
from gossip_agent import errors
from gossip_agent.observability import logs
from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

DEFAULT_PORT = 50051
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_PORT}"


def _flag(variable: config_mod.Variable) -> str:
    return "--" + variable.name.lower().replace("_", "-")


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gossip-agent", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an agent")
    for variable in config_mod.VARIABLES:
        run.add_argument(_flag(variable), dest=variable.name, metavar=variable.unit.upper(),
                         help=f"{variable.why} (env {variable.name})")
    for name, text in (("state", "the snapshot an agent holds"),
                       ("peers", "the peers an agent knows"),
                       ("leader", "the lease as an agent sees it")):
        _query_parser(commands.add_parser(name, help=text))
    setter = _query_parser(commands.add_parser("set", help="set a service's replicas"))
    setter.add_argument("ip", type=_ipv4, help="the Service ClusterIP, e.g. 10.96.0.10")
    setter.add_argument("replicas", type=_replicas, help="ready replicas (0 = scaled to zero)")
    setter.add_argument("--name", default="", help="namespace/name, for people")
    deleter = _query_parser(commands.add_parser("delete", help="remove a service"))
    deleter.add_argument("ip", type=_ipv4, help="the Service ClusterIP")
    detach = commands.add_parser(
        "detach", help="remove this agent's XDP program (this network namespace) and maps")
    detach.add_argument("--bpf-pin-dir", dest="BPF_PIN_DIR", metavar="PATH",
                        help="the agent's pin directory (env BPF_PIN_DIR)")
    epoch = commands.add_parser(
        "epoch", help="show the lease record's term, or move it up under the lease "
        "(same environment as `run`: COORDINATION_BACKEND, REDIS_URL, BPF_LEASE_DIR...)")
    epoch.add_argument("action", choices=("show", "reset"))
    epoch.add_argument("--to", type=int, default=0, metavar="TERM",
                       help="reset: the term to record (>= the current one, e.g. the highest "
                            "max_term_seen the agents report)")
    env = commands.add_parser("env", help="list every environment variable")
    env.add_argument("--markdown", action="store_true", help="as docs/configuration.md's table")
    return parser


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"replicas must be an integer, not {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError("replicas must be between 0 and 4294967295")
    return value


def _ipv4(text: str) -> str:
    """The agent accepts only IPv4 ClusterIPs (SERVICE_LIST keys are u32): refused here, with
    exit 2, rather than after a round trip."""
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ip must be an IPv4 address such as 10.96.0.10, not {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--timeout is a number of seconds (e.g. 5 or 0.5), not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"--timeout must be more than 0 seconds, not {text!r}")
    return value


def _target(text: str) -> str:
    """host:port; a bare host gets the agent's port, 50051 (grpc would dial 443 for it)."""
    text = text.strip()
    if "://" in text or text.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return text
    if text.startswith("["):  # [v6] or [v6]:port
        return text if "]:" in text else f"{text}:{DEFAULT_PORT}"
    if text.count(":") > 1:  # a bare IPv6 address
        return f"[{text}]:{DEFAULT_PORT}"
    if ":" not in text:
        return f"{text}:{DEFAULT_PORT}"
    return text


def _query_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--target", type=_target, default=DEFAULT_TARGET,
                        help=f"agent host:port (port {DEFAULT_PORT} when omitted)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=_seconds, default=5.0, help="seconds (> 0)")
    # grpcurl's flags: mutual TLS against an agent with TLS_CERT/TLS_KEY/TLS_CA set.
    parser.add_argument("--cacert", "-cacert", default="", help="CA (PEM) the agent's "
                        "certificate is checked against; with --cert and --key: mutual TLS")
    parser.add_argument("--cert", "-cert", default="", help="client certificate (PEM)")
    parser.add_argument("--key", "-key", default="", help="client private key (PEM)")
    parser.add_argument("--servername", "-servername", default="gossip-agent",
                        help="name the agent's certificate must carry (TLS_SERVER_NAME)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = main_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "env":
        return _env(args)
    if args.command == "detach":
        return _detach(args)
    if args.command == "epoch":
        return _epoch(args)
    return _query(args)


# -- run ----------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    for variable in config_mod.VARIABLES:
        value = getattr(args, variable.name)
        if value is not None:
            env[variable.name] = value
    try:
        cfg = config_mod.from_env(env, hostname=socket.gethostname())
    except errors.ConfigError as exc:
        print(f"gossip-agent: {exc}", file=sys.stderr)
        return 2
    logs.configure(level=cfg.log_level, fmt=cfg.observe.log_format, node=cfg.node.name)
    from gossip_agent import agent  # heavy imports (grpc server, bcc) only for `run`

    try:
        return asyncio.run(agent.serve(cfg))
    except (errors.GossipAgentError, OSError) as exc:
        print(f"gossip-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _detach(args: argparse.Namespace) -> int:
    variable = next(v for v in config_mod.VARIABLES if v.name == "BPF_PIN_DIR")
    text = args.BPF_PIN_DIR or os.environ.get("BPF_PIN_DIR") or variable.defaults["cluster"]
    try:
        pin_dir = variable.parse(text)
    except ValueError as exc:
        print(f"gossip-agent: BPF_PIN_DIR={text!r}: {exc}", file=sys.stderr)
        return 2
    from gossip_agent.dataplane import detach  # bcc only for this command

    try:
        done = detach.detach(pin_dir=pin_dir)
    except errors.GossipAgentError as exc:
        print(f"gossip-agent: {exc}", file=sys.stderr)
        return 1
    print(f"detached from: {', '.join(done.interfaces) or 'no interface'}")
    for line in done.skipped:
        print(f"left alone: {line}")
    for line in done.failed:
        print(f"gossip-agent: could not detach {line}; the pins were kept", file=sys.stderr)
    print(f"removed: {', '.join(done.removed) or 'no pin'}")
    return 1 if done.failed else 0


def _epoch(args: argparse.Namespace) -> int:
    env = {**os.environ, "NODE_NAME": f"epoch-operator-{socket.gethostname()}"}
    try:
        cfg = config_mod.from_env(env, hostname=socket.gethostname())
    except errors.ConfigError as exc:
        print(f"gossip-agent: {exc}", file=sys.stderr)
        return 2
    if args.action == "reset" and args.to < 1:
        print("gossip-agent: epoch reset needs --to TERM (>= 1)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_epoch_call(cfg, args))
    except errors.GossipAgentError as exc:
        print(f"gossip-agent: {exc}", file=sys.stderr)
        return 1


async def _epoch_call(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from gossip_agent import agent  # the backends, as the agent opens them
    from gossip_agent.leases import epoch

    lease = agent.open_lease(cfg)
    try:
        if args.action == "reset":
            done = await epoch.reset(lease, term=args.to)
            print(f"term epoch moved from {done.previous} to {done.term} "
                  f"({lease.backend} at {agent.lease_location(cfg)}); the lease is free")
            return 0
        record = await lease.read()
    finally:
        await lease.close()
    if record is None:
        print(f"no lease record yet ({lease.backend} at {agent.lease_location(cfg)})")
    else:
        print(f"term {record.term}, held by {record.holder or 'nobody'} "
              f"({lease.backend} at {agent.lease_location(cfg)})")
    return 0


def _env(args: argparse.Namespace) -> int:
    if args.markdown:
        print(config_mod.markdown_table())
        return 0
    for v in config_mod.VARIABLES:
        print(f"{v.name:24} {v.unit:14} default={v.defaults['cluster'] or '-'}\n    {v.why}")
    return 0


# -- queries ------------------------------------------------------------------------------------


def _query(args: argparse.Namespace) -> int:
    try:
        response, absent = asyncio.run(_call(args))
    except grpc.aio.AioRpcError as exc:
        print(f"gossip-agent: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except tls.TlsError as exc:  # names TLS_CERT/TLS_KEY/TLS_CA: --cert/--key/--cacert here
        print(f"gossip-agent: --cert/--key/--cacert: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
        ), indent=2))
    else:
        print(FORMATTERS[args.command](response))
    if absent:
        print(f"gossip-agent: {args.ip} was not in the table {args.target} holds: "
              "nothing to delete", file=sys.stderr if args.json else sys.stdout)
    return 0


def _open_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    if not args.cacert:
        return grpc.aio.insecure_channel(args.target)
    files = tls.TlsFiles(cert=args.cert, key=args.key, ca=args.cacert,
                         server_name=args.servername)
    return tls.ChannelFactory(files).open(args.target, [])


async def _call(args: argparse.Namespace) -> tuple[protobuf_message.Message, bool]:
    """The response, and for `delete` whether the address was absent from the target's table
    just before (deleting it anyway is harmless: the write is idempotent, and a follower's
    table may lag behind the leader's)."""
    async with _open_channel(args) as channel:
        stub = pb_grpc.StateStub(channel)
        absent = False
        request: Any
        if args.command == "state":
            method, request = stub.GetState, pb.GetStateRequest()
        elif args.command == "peers":
            method, request = stub.ListPeers, pb.ListPeersRequest()
        elif args.command == "leader":
            method, request = stub.GetLeader, pb.GetLeaderRequest()
        elif args.command == "set":
            method = stub.SetService
            request = pb.SetServiceRequest(ip=args.ip, replicas=args.replicas, name=args.name)
        else:
            held = await stub.GetState(pb.GetStateRequest(), timeout=args.timeout)
            absent = all(entry.ip != args.ip for entry in held.entries)
            method, request = stub.DeleteService, pb.DeleteServiceRequest(ip=args.ip)
        response: protobuf_message.Message = await method(request, timeout=args.timeout)
        return response, absent


def _version(version: pb.Version) -> str:
    return f"{version.term}.{version.seq}"


def _format_state(r: pb.GetStateResponse) -> str:
    lines = [
        f"node        {r.node}",
        f"version     {_version(r.version)}{'' if r.complete else ' (incomplete)'}",
        f"leader      {r.leader or '-'}",
        f"dataplane   {r.dataplane} {r.map_path} (max {r.map_max_entries})",
        f"hash        {r.content_hash[:16] or '-'}",
        f"entries     {len(r.entries)}",
    ]
    lines += [f"  {e.ip:15} {e.replicas:>6}  {e.name}" for e in r.entries]
    return "\n".join(lines)


def _format_peers(r: pb.ListPeersResponse) -> str:
    lines = [f"{'ADDRESS':22} {'NODE':16} {'STATE':8} {'LAST':>8} {'VERSION':>9} ORIGIN"]
    for p in r.peers:
        last = "-" if p.last_contact_ms_ago < 0 else f"{p.last_contact_ms_ago}ms"
        lines.append(f"{p.address:22} {p.node or '-':16} {p.state:8} {last:>8} "
                     f"{_version(p.version_known):>9} {p.origin}")
    return "\n".join(lines)


def _format_leader(r: pb.GetLeaderResponse) -> str:
    lines = [
        f"leader      {r.leader_node or '-'} {r.leader_address}",
        f"holder      {r.holder or '-'}",
        f"term        {r.term}",
        f"backend     {r.backend}",
        f"this agent  {'leader' if r.is_self else 'follower'}",
    ]
    if r.refusal:
        lines.append(f"refusal     {r.refusal}")
    if r.note:
        lines.append(f"note        {r.note}")
    return "\n".join(lines)


def _format_write(r: pb.WriteResponse) -> str:
    durable = ("durable" if r.acked_peers >= r.quorum
               else "NOT yet durable: a leader dying now may lose it")
    return (f"written in version {_version(r.version)} by {r.leader}; "
            f"acked by {r.acked_peers} peer(s) of {r.quorum} needed, {durable}")


FORMATTERS: dict[str, Callable[[Any], str]] = {
    "state": _format_state,
    "peers": _format_peers,
    "leader": _format_leader,
    "set": _format_write,
    "delete": _format_write,
}
