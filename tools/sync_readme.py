"""Rewrites the README's env var table from gossip_agent.config (the test checks they match)."""

from __future__ import annotations

import pathlib
import re

from gossip_agent import config

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"


def main() -> None:
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _: f"{START}\n{config.markdown_table()}\n{END}", text)
    README.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
