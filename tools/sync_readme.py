"""Rewrites the env var table in docs/configuration.md from gossip_agent.config.

tests/unit/test_docs_and_manifests.py checks that they match. (The table lived in README.md
before the docs moved to docs/; the script kept its name.)
"""

from __future__ import annotations

import pathlib
import re

from gossip_agent import config

TARGET = pathlib.Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"


def main() -> None:
    text = TARGET.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _: f"{START}\n{config.markdown_table()}\n{END}", text)
    TARGET.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
