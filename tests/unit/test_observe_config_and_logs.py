"""Configuration of the console, metrics and logs; the JSON log format; task names."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from gossip_agent import config, errors
from gossip_agent.observability import logs, observe

pytestmark = pytest.mark.unit

BASE = {"ADVERTISE_ADDR": "10.0.0.1:50051"}


@pytest.mark.parametrize("profile", config.PROFILES)
def test_console_is_off_and_on_loopback_and_the_python_console_disabled_by_default(
    profile: str,
) -> None:
    observe_cfg = config.from_env({**BASE, "PROFILE": profile}).observe
    assert observe_cfg.monitor_port == 0
    assert observe_cfg.monitor_host == "127.0.0.1"
    assert observe_cfg.python_console is False
    assert observe_cfg.metrics_port == 0
    assert observe_cfg.log_format == "text"


def test_web_ui_and_python_console_ports_follow_the_console_port_unless_given() -> None:
    derived = config.from_env({**BASE, "AIOMONITOR_PORT": "20101"}).observe
    assert (derived.monitor_webui_port, derived.monitor_console_port) == (20102, 20103)
    given = config.from_env({**BASE, "AIOMONITOR_PORT": "20101", "AIOMONITOR_WEBUI_PORT": "9000",
                             "AIOMONITOR_CONSOLE_PORT": "9001",
                             "AIOMONITOR_PYTHON_CONSOLE": "true"}).observe
    assert (given.monitor_webui_port, given.monitor_console_port) == (9000, 9001)
    assert given.python_console is True


def test_invalid_observability_variables_are_all_reported_by_name() -> None:
    with pytest.raises(errors.ConfigError) as info:
        config.from_env({**BASE, "LOG_FORMAT": "xml", "METRICS_PORT": "70000",
                         "AIOMONITOR_HOST": "localhost", "AIOMONITOR_PORT": "65535",
                         "AIOMONITOR_PYTHON_CONSOLE": "maybe"})
    text = str(info.value)
    for name in ("LOG_FORMAT", "METRICS_PORT", "AIOMONITOR_HOST", "AIOMONITOR_PORT",
                 "AIOMONITOR_PYTHON_CONSOLE"):
        assert name in text, text


def test_json_log_lines_hold_time_level_node_logger_event_and_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(node="node-a"))
    logger = logging.getLogger("gossip_agent.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("lease %s lost at term %d", "bpffs", 7,
                       extra={"term": 7, "holder": object()})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "warning" and first["node"] == "node-a"
    assert first["logger"] == "gossip_agent.test-json"
    assert first["event"] == "lease bpffs lost at term 7"
    assert first["fields"]["term"] == 7 and first["fields"]["holder"].startswith("<object")
    assert first["time"].endswith("Z")
    assert second["event"] == "crashed" and "ValueError: boom" in second["fields"]["exc"]


async def test_unnamed_tasks_are_named_after_their_coroutine_and_named_ones_keep_theirs() -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    observe.name_unnamed_tasks(loop)
    try:
        async def idle() -> None:
            await asyncio.sleep(0)

        unnamed = asyncio.ensure_future(idle())
        named = asyncio.create_task(idle(), name="gossip.anti-entropy")
        await asyncio.gather(unnamed, named)
    finally:
        loop.set_task_factory(previous)
    assert unnamed.get_name().startswith("tests.") and unnamed.get_name().endswith("idle")
    assert named.get_name() == "gossip.anti-entropy"
