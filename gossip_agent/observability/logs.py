"""Log output: one human-readable line per record (LOG_FORMAT=text) or one JSON object per line
(LOG_FORMAT=json) for log collectors (Loki, Elasticsearch, `kubectl logs | jq`).

A JSON line holds: time (RFC 3339, UTC, milliseconds), level, node (NODE_NAME), logger, event
(the message, rendered), and `fields` when the record has any: the values passed with `extra=`
(the key events pass term, holder, reason... so a collector need not parse the sentence) and
the exception's traceback (`exc`). Fields are
converted with str() when JSON cannot hold them, so a log call never fails on a value.

What is logged at INFO and above, once per occurrence: lease won / lost / term moved, refusal to
lead, a new term adopted, conflicts, rejected snapshots, readiness. Steady-state gossip
(each push, each exchange) is DEBUG, so INFO stays quiet in a healthy cluster.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

# LogRecord's own attributes: everything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message", "asctime", "node"}


class JsonFormatter(logging.Formatter):
    def __init__(self, *, node: str) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "node": self._node,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = _fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if fields:
            line["fields"] = fields
        return json.dumps(line, default=str, ensure_ascii=False)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def configure(*, level: str, fmt: str, node: str) -> None:
    """Sets up the root logger for an agent process (replacing any earlier handler)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node=node))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {node} %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp (metrics endpoint, aiomonitor's web UI) logs every request at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # prompt_toolkit (the console's telnet server) logs each negotiation step at INFO.
    logging.getLogger("prompt_toolkit").setLevel(logging.WARNING)
