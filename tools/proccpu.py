"""CPU time of processes and CPU steal of the machine, read from /proc: what benchmarks report.

- A process's CPU is utime + stime from /proc/<pid>/stat (fields 14 and 15, every thread of
  the process, not its children), in clock ticks of 1/SC_CLK_TCK s: 10 ms on this kernel. A
  figure is only as good as the number of ticks behind it, so measure over seconds, not
  milliseconds, and divide.
- Steal is the `steal` column (the 8th number) of /proc/stat's `cpu` line, summed over every
  core: time this VM wanted to run while the hypervisor ran someone else. Given as a % of
  wall time x cores, it makes a run on a noisy machine recognisable (a few % moves latency
  figures by 2-3x here).

A Sample is one reading of a set of processes and of the machine; between(a, b) turns two of
them into a Window: CPU seconds per process, the wall time and the steal in between.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping

TICK = 1.0 / os.sysconf("SC_CLK_TCK")  # seconds per clock tick
CORES = os.cpu_count() or 1
STEAL_COLUMN = 8  # /proc/stat `cpu` line: user nice system idle iowait irq softirq steal ...


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise RuntimeError(f"process {pid} is gone: it cannot be measured") from None
    # The command name (field 2) is in parentheses and may hold spaces: count from after it.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15, counted from 1
    return (utime + stime) * TICK


def steal_seconds() -> float:
    """CPU steal summed over every core since boot, in seconds."""
    with open("/proc/stat", encoding="ascii") as handle:
        line = handle.readline()  # the first line is the `cpu` total
    return int(line.split()[STEAL_COLUMN]) * TICK


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu: Mapping[int, float]  # pid -> cpu_seconds(pid)
    steal: float  # steal_seconds()


def sample(pids: Iterable[int] = ()) -> Sample:
    return Sample(at=time.monotonic(), cpu={pid: cpu_seconds(pid) for pid in pids},
                  steal=steal_seconds())


@dataclasses.dataclass(frozen=True)
class Window:
    wall: float  # seconds
    cpu: Mapping[int, float]  # pid -> CPU seconds used in the window
    steal_pct: float  # % of wall x CORES

    def percent(self, pid: int) -> float:
        """CPU of `pid` in the window as % of one core."""
        return 100.0 * self.cpu[pid] / self.wall


def between(start: Sample, end: Sample) -> Window:
    wall = max(end.at - start.at, 1e-9)
    return Window(
        wall=wall,
        cpu={pid: end.cpu[pid] - start.cpu[pid] for pid in start.cpu if pid in end.cpu},
        steal_pct=100.0 * (end.steal - start.steal) / (wall * CORES),
    )
