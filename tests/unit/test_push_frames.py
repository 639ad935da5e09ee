"""The push port's frames (gossip/frames.py): whole messages back in order, however the bytes
arrive, and a length over the limit refused before its body is kept."""

from __future__ import annotations

import struct

import pytest

from gossip_agent import config, errors
from gossip_agent.gossip import frames


def test_frames_split_anywhere_come_back_whole_and_in_order() -> None:
    messages = [b"", b"a", b"hello" * 100, bytes(range(256))]
    stream = b"".join(frames.frame(m) for m in messages)
    for step in (1, 3, 4, 7, len(stream)):
        splitter = frames.Splitter(limit=4096)
        out: list[bytes] = []
        for at in range(0, len(stream), step):
            out += splitter.feed(stream[at:at + step])
        assert out == messages, step
        assert splitter.pending == 0


def test_a_frame_over_the_limit_is_refused_as_soon_as_its_length_arrives() -> None:
    splitter = frames.Splitter(limit=100)
    assert splitter.feed(frames.frame(b"x" * 100)) == [b"x" * 100]  # the limit itself is fine
    with pytest.raises(frames.FrameTooLarge, match="101 bytes is over the 100-byte limit"):
        splitter.feed(struct.pack(">I", 101))
    assert splitter.pending == 0  # nothing of it kept


def test_push_port_is_a_port_zero_or_off_and_anything_else_names_the_variable() -> None:
    base = {"PROFILE": "local"}
    assert config.from_env(base).gossip.push_port == 0  # local: any free port
    cluster = config.from_env({"POD_IP": "10.0.0.5"})  # cluster profile: the manifests' port
    assert cluster.gossip.push_port == 50053
    assert config.from_env({**base, "PUSH_PORT": "off"}).gossip.push_port is None
    assert config.from_env({**base, "PUSH_PORT": "7000"}).gossip.push_port == 7000
    for bad in ("-1", "65536", "fast"):
        with pytest.raises(errors.ConfigError, match="PUSH_PORT"):
            config.from_env({**base, "PUSH_PORT": bad})
