"""The etcd-watch anchor: what a user would build instead, run at the same N as our benchmark.

The anchor is ../shared/anchors/anchor_bench.py beside the repository (for a git worktree:
beside its main checkout), `run --design etcd --encoding bin`: an etcd server on loopback, N
subscriber processes each holding a watch on one key, one leader process putting the packed
1024-entry table (8 KB) into it. Its convergence figure is the latency phase's
`last_subscriber` (leader's put -> the last subscriber decoded the table, on the shared
CLOCK_MONOTONIC), the same thing tools/bench.py measures for gossip-agent. It writes one JSON
file per run into --outdir, `etcd-bin_n<N>_r<rep>.json`, which is what is read here.

It runs outside the project's virtualenv (its clients are no dependency of ours). Set-up, once:

    apt-get install -y etcd-server                     # /usr/bin/etcd, which the anchor runs
    python3 -m venv .cache/anchor-venv && .cache/anchor-venv/bin/pip install aetcd psutil

(aetcd: the subscribers' and the leader's client; psutil: the orchestrator's server sampling.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile

import proccpu  # tools/proccpu.py, next to this module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VENV = os.path.join(REPO, ".cache", "anchor-venv")
ETCD = "/usr/bin/etcd"  # anchor_bench.py starts this path
MODULES = ("aetcd", "psutil")
DESIGN, ENCODING = "etcd", "bin"
# The anchor ends every run with a throughput phase (back-to-back puts for --duration s) that
# is not read here: 1 s instead of its default 10 keeps it from loading this shared machine.
THROUGHPUT_SECONDS = 1.0
RUN_TIMEOUT = 600.0


def default_dir() -> str:
    """../shared/anchors beside the repository, or beside the main checkout of a worktree."""
    beside = os.path.join(os.path.dirname(REPO), "shared", "anchors")
    if os.path.isdir(beside):
        return beside
    common = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True, text=True, check=False).stdout.strip()
    main_checkout = os.path.dirname(common) if common else REPO
    return os.path.join(os.path.dirname(main_checkout), "shared", "anchors")


def install_hint(venv: str) -> str:
    return (f"install with: apt-get install -y etcd-server; python3 -m venv {venv} && "
            f"{venv}/bin/pip install {' '.join(MODULES)}")


def missing(*, anchor_dir: str, venv: str) -> list[str]:
    """What --anchors lacks here, one phrase each (empty when everything is there)."""
    gaps = []
    if not os.path.isfile(os.path.join(anchor_dir, "anchor_bench.py")):
        gaps.append(f"{anchor_dir}/anchor_bench.py (--anchor-dir)")
    if not os.path.isfile(ETCD):
        gaps.append(f"{ETCD} (Debian's etcd-server)")
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        gaps.append(f"the anchor virtualenv {venv} (--anchor-venv)")
        return gaps
    probe = subprocess.run(
        [python, "-c", "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
         "if importlib.util.find_spec(m) is None))", *MODULES],
        capture_output=True, text=True, check=False)
    absent = probe.stdout.split() if probe.returncode == 0 else list(MODULES)
    gaps += [f"the Python module {m} in {venv}" for m in absent]
    return gaps


@dataclasses.dataclass(frozen=True)
class Round:
    p50_ms: float
    p99_ms: float
    max_ms: float
    steal_pct: float  # over the whole anchor run (server and subscribers starting included)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in dataclasses.asdict(self).items()}


def run(*, anchor_dir: str, venv: str, nodes: int, changes: int, gap: float, rep: int) -> Round:
    """One anchor run at `nodes` subscribers: `changes` puts, one every `gap` seconds."""
    with tempfile.TemporaryDirectory(prefix="gossip-bench-anchor-") as outdir:
        before = proccpu.sample()
        subprocess.run(
            [os.path.join(venv, "bin", "python"), os.path.join(anchor_dir, "anchor_bench.py"),
             "run", "--design", DESIGN, "--encoding", ENCODING, "--n", str(nodes),
             "--rep", str(rep), "--count", str(changes), "--interval", str(gap),
             "--duration", str(THROUGHPUT_SECONDS), "--outdir", outdir],
            check=True, timeout=RUN_TIMEOUT, stdout=subprocess.DEVNULL)
        steal = proccpu.between(before, proccpu.sample()).steal_pct
        path = os.path.join(outdir, f"{DESIGN}-{ENCODING}_n{nodes}_r{rep}.json")
        with open(path, encoding="utf-8") as handle:
            last = json.load(handle)["latency"]["last_subscriber"]
    return Round(p50_ms=last["p50_ms"], p99_ms=last["p99_ms"], max_ms=last["max_ms"],
                 steal_pct=steal)
