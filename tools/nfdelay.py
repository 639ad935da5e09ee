"""A userspace packet delayer over NFQUEUE: the fault campaign's stand-in for `tc netem delay`.

    nsenter --net=/run/netns/NODE python tools/nfdelay.py --queue 7 --delay-ms 150 [--jitter-ms 50]
    iptables -A CHAOS_OUT -j NFQUEUE --queue-num 7        (in the same namespace)

This machine's kernel has no netem (CONFIG_NET_SCH_NETEM is unset) but has NFQUEUE
(CONFIG_NETFILTER_NETLINK_QUEUE and the xt NFQUEUE target built in). Every packet the rule sends
to the queue waits in the kernel until a verdict comes; this process answers NF_ACCEPT for each
one `delay` (plus a seeded jitter) after it was queued, in arrival order, so the packets of a
TCP connection keep their order and nothing is lost or duplicated. Why NFQUEUE and not a TCP
proxy per link: a proxy only delays connections opened after it is in place, and the agents'
gRPC channels are long-lived; NFQUEUE delays the packets of connections that already exist.

It speaks nfnetlink_queue directly (struct layouts from include/uapi/linux/netfilter/
nfnetlink_queue.h, stable UAPI), so no binding library is needed. Copy mode META: the kernel
sends only the packet id, never the payload. The queue holds up to 1024 packets by default;
packets beyond that are dropped by the kernel, which at gossip rates only a flood would reach.

Stopping: delete the iptables rule first, then SIGTERM this process. Packets still queued when
the listener goes are dropped by the kernel (TCP retransmits them).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NFGEN_HDR = struct.Struct("=BBH")  # family, version, res_id (network order, packed by hand)
NLA_HDR = struct.Struct("=HH")  # len, type


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    size = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def _message(msg: int, queue: int, attrs: bytes, *, seq: int, flags: int = NLM_F_REQUEST
             ) -> bytes:
    body = NFGEN_HDR.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg,
                          flags, seq, 0) + body


class Delayer:
    def __init__(self, *, queue: int, delay: float, jitter: float, seed: int) -> None:
        self.queue, self.delay, self.jitter = queue, delay, jitter
        self.random = random.Random(seed)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.pending: collections.deque[tuple[float, int]] = collections.deque()
        self._seq = 0
        self.released = 0

    def bind(self) -> None:
        """Binds the queue (the kernel refuses a second listener: EBUSY) in copy-meta mode."""
        cmd = struct.pack("=BxH", NFQNL_CFG_CMD_BIND, socket.htons(socket.AF_INET))
        self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, cmd))
        params = struct.pack(">IB", 0, NFQNL_COPY_META)  # copy_range (unused in META), mode
        self._request(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, params))

    def _request(self, msg: int, attrs: bytes) -> None:
        self._seq += 1
        self.sock.send(_message(msg, self.queue, attrs, seq=self._seq,
                                flags=NLM_F_REQUEST | NLM_F_ACK))
        while True:
            data = self.sock.recv(65536)
            length, kind, _, seq, _ = NLMSG_HDR.unpack_from(data)
            if kind == NLMSG_ERROR and seq == self._seq:
                (error,) = struct.unpack_from("=i", data, NLMSG_HDR.size)
                if error:
                    raise OSError(-error, f"nfqueue config {msg}: {os.strerror(-error)}")
                return

    def run(self, stop: list[bool]) -> None:
        while not stop:
            timeout = max(0.0, self.pending[0][0] - time.monotonic()) if self.pending else 0.5
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if readable:
                self._receive()
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                _, packet_id = self.pending.popleft()
                self._verdict(packet_id)

    def _receive(self) -> None:
        data = self.sock.recv(1 << 20)
        offset = 0
        while offset + NLMSG_HDR.size <= len(data):
            length, kind, _, _, _ = NLMSG_HDR.unpack_from(data, offset)
            if length < NLMSG_HDR.size:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                packet_id = self._packet_id(data[offset + NLMSG_HDR.size:offset + length])
                if packet_id is not None:
                    # FIFO release: a later packet never overtakes an earlier one, so the
                    # jitter moves whole runs of packets, never reorders a connection.
                    due = time.monotonic() + self.delay + self.random.uniform(0, self.jitter)
                    if self.pending:
                        due = max(due, self.pending[-1][0])
                    self.pending.append((due, packet_id))
            offset += _align(length)

    @staticmethod
    def _packet_id(body: bytes) -> int | None:
        offset = NFGEN_HDR.size
        while offset + NLA_HDR.size <= len(body):
            size, kind = NLA_HDR.unpack_from(body, offset)
            if size < NLA_HDR.size:
                return None
            if kind & 0x3FFF == NFQA_PACKET_HDR:
                return int(struct.unpack_from(">I", body, offset + NLA_HDR.size)[0])
            offset += _align(size)
        return None

    def _verdict(self, packet_id: int) -> None:
        self._seq += 1
        verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))
        try:
            self.sock.send(_message(NFQNL_MSG_VERDICT, self.queue, verdict, seq=self._seq))
            self.released += 1
        except OSError:
            pass  # the packet was dropped meanwhile (queue flushed); nothing to release


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number (0..65535)")
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    delayer = Delayer(queue=args.queue, delay=args.delay_ms / 1000,
                      jitter=args.jitter_ms / 1000, seed=args.seed)
    delayer.bind()
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    print(f"nfdelay: queue {args.queue} delaying {args.delay_ms:g} ms "
          f"(+0..{args.jitter_ms:g} ms)", flush=True)
    delayer.run(stop)
    print(f"nfdelay: released {delayer.released} packets", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
