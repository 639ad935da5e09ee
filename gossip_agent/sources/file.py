"""SOURCE=file: services from a JSON or YAML file, re-read when it changes.

Accepted shapes (YAML is a superset of JSON, so one parser reads both):

    services:                       # a list of entries
      - {ip: 10.96.0.10, replicas: 0, name: default/web}
    # or a mapping ip -> replicas, or ip -> {replicas: N, name: ns/name}
    10.96.0.11: 2

The file is polled (SOURCE_POLL_INTERVAL) by (inode, size, mtime) and parsed only when those
change: a ConfigMap volume updates by swapping a symlink, which inotify on the file would miss.
A file that does not parse or breaks a rule is reported and ignored: the last good state stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from gossip_agent import errors
from gossip_agent.core import snapshots
from gossip_agent.sources import base

log = logging.getLogger("gossip_agent.sources")


def parse(text: str, *, origin: str, max_entries: int) -> base.Desired:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.SnapshotInvalid(f"{origin}: not valid JSON or YAML: {exc}") from exc
    if document is None:
        document = {}
    items = _items(document, origin)
    entries: dict[int, int] = {}
    names: dict[int, str] = {}
    for index, item in enumerate(items):
        key, replicas, name = _entry(item, origin=origin, index=index)
        if key in entries:
            raise errors.SnapshotInvalid(f"{origin}: {snapshots.format_ip(key)} listed twice")
        entries[key] = replicas
        if name:
            names[key] = name
    if len(entries) > max_entries:
        raise errors.SnapshotTooLarge(
            f"{origin}: {len(entries)} services; the map holds {max_entries}"
        )
    return base.Desired(entries, names)


def _items(document: Any, origin: str) -> list[Any]:
    if isinstance(document, Mapping) and "services" in document:
        document = document["services"] or []
    if isinstance(document, list):
        return document
    if isinstance(document, Mapping):
        return [_mapping_item(ip, value) for ip, value in document.items()]
    raise errors.SnapshotInvalid(f"{origin}: expected a list of services or a mapping")


def _mapping_item(ip: Any, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {"ip": ip, **value}
    return {"ip": ip, "replicas": value}


def _entry(item: Any, *, origin: str, index: int) -> tuple[int, int, str]:
    where = f"{origin}: service #{index + 1}"
    if not isinstance(item, Mapping):
        raise errors.SnapshotInvalid(f"{where}: expected a mapping with ip and replicas")
    replicas = item.get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise errors.SnapshotInvalid(f"{where}: replicas must be an integer")
    name = item.get("name", "") or ""
    if not isinstance(name, str):
        raise errors.SnapshotInvalid(f"{where}: name must be a string")
    try:
        key = snapshots.parse_ip(str(item.get("ip", "")))
        snapshots.check_replicas(replicas)
        snapshots.check_name(name)
    except errors.SnapshotInvalid as exc:
        raise errors.SnapshotInvalid(f"{where}: {exc}") from None
    return key, replicas, name


class FileSource(base.RecordsScaleUps):
    kind = "file"
    accepts_writes = False

    def __init__(self, *, path: str, poll_interval: float, max_entries: int) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.max_entries = max_entries
        self._stamp: tuple[int, int, int] | None = None
        self._last: base.Desired | None = None

    def read(self) -> base.Desired | None:
        """The file's services now; the last good read if the file is broken (None if never)."""
        try:
            self._last = self._read()
        except (OSError, errors.GossipAgentError) as exc:
            log.error("SOURCE_FILE %s: %s; keeping the last good state", self.path, exc)
        return self._last

    def _read(self) -> base.Desired:
        with open(self.path, encoding="utf-8") as handle:
            return parse(handle.read(), origin=self.path, max_entries=self.max_entries)

    def _changed_on_disk(self) -> bool:
        try:
            info = os.stat(self.path)
        except OSError:
            stamp = (0, 0, 0)
        else:
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        changed = stamp != self._stamp
        self._stamp = stamp
        return changed

    async def watch(self, on_change: Callable[[base.Desired], None]) -> None:
        while True:
            if self._changed_on_disk():
                previous = self._last
                desired = self.read()
                if desired is not None and desired != previous:
                    on_change(desired)
            await asyncio.sleep(self.poll_interval)
