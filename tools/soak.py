"""The churn soak, longer: residents whose peers are replaced --replacements times by agents on
new addresses (lab.churn; tests/integration/test_churn.py runs 250).

Every --every replacements, once the residents have closed what they kept for departed peers,
prints one row: per resident the channels its transport keeps, its membership entries and the
metric series it exposes; the leader's traffic facts; this process's open file descriptors and
resident memory (every agent runs in this process). With --json, one JSON line with every row
and the memory growth from the row after --warm-up to the last.

    .venv/bin/python tools/soak.py --replacements 1000 --every 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from typing import Any

from lab import churn


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replacements", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="replacements between rows")
    parser.add_argument("--warm-up", type=int, default=50,
                        help="replacements before the row memory growth is counted from")
    parser.add_argument("--residents", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=2, help="new agents per replacement")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


async def soak(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gossip-agent-soak-") as workdir:
        run = churn.Soak(workdir, residents=args.residents, per_round=args.per_round)
        async with run.running():
            for done in range(1, args.replacements + 1):
                await run.replace()
                if done == args.warm_up or done % args.every == 0:
                    row = (await run.settled()).row()
                    row["seconds"] = round(time.monotonic() - started, 1)
                    rows.append(row)
                    if not args.json:
                        print(_line(row), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    return (f"{row['replacements']:6d} replaced  channels {row['channels']}  "
            f"members {row['members']}  series {row['series']}  facts {row['facts']}  "
            f"fds {row['fds']}  rss {row['rss_kb'] / 1024:.1f} MB  ({row['seconds']} s)")


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.ERROR)  # each new agent warns of its memory map
    rows = asyncio.run(soak(args))
    baseline = next((r for r in rows if r["replacements"] >= args.warm_up), rows[0])
    growth = rows[-1]["rss_kb"] - baseline["rss_kb"]
    if args.json:
        print(json.dumps({"rows": rows, "rss_growth_kb": growth,
                          "from": baseline["replacements"], "to": rows[-1]["replacements"]}))
    else:
        print(f"resident memory grew {growth} kB from replacement {baseline['replacements']} "
              f"to {rows[-1]['replacements']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
