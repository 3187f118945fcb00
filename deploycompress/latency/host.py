"""How busy the rest of the machine was while a speedup was timed.

Why it goes in the report: interleaved A/B rounds cancel load that slows both models alike, but not
load that slows them differently. On this project's 2-core VM, a RegNet-style net of many small grouped
convs was timed in alternating windows of 20 rounds, 12 beside a busy loop on the other core and 12
without: 2.04-3.00x (median 2.74x) beside it, 2.42-3.03x (median 2.94x) without; in its slow windows
every op of the compressed model ran about 1.8x slower, the dense model's 1.1-1.3x. resnet_digits' 2x
plan read 2.10x and 2.11x either way. (The same net also had slow windows with nothing else running,
from outside the VM: those no counter here sees.) A report that says the machine was busy tells
whoever gates on it to measure again on a quiet one.

Linux only (/proc/stat); elsewhere the figures are None. What is counted is what the OS sees: other
processes' CPU time, and time the hypervisor gave to other guests (steal); a neighbour on the host's
sibling hyperthread shows in neither.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Other processes' share of the CPU time we left free, from which the report calls the machine busy.
BUSY_FROM = 0.25
_STAT = "/proc/stat"


@dataclass(frozen=True)
class CpuSnapshot:
    busy_s: float   # every CPU's user, nice, system, irq and softirq time, summed
    steal_s: float  # time the hypervisor ran other guests on our CPUs
    own_s: float    # this process's CPU time (all its threads)
    wall_s: float


def snapshot() -> CpuSnapshot | None:
    """The machine's CPU counters now, or None where /proc/stat is not there (not Linux)."""
    try:
        with open(_STAT) as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    ticks = [float(v) for v in fields[1:9]] + [0.0] * (8 - len(fields[1:9]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    hz = float(os.sysconf("SC_CLK_TCK"))
    return CpuSnapshot((user + nice + system + irq + softirq) / hz, steal / hz, time.process_time(),
                       time.perf_counter())


def load_between(start: CpuSnapshot | None, end: CpuSnapshot | None, cpus: int | None = None) -> dict | None:
    """{'others_busy': share of the CPU time this process left free that other processes used,
    'steal': share of all CPU time the hypervisor took, 'cpus', 'seconds'}; None without counters.

    With one timing thread on 2 CPUs, others_busy 1.0 means the other CPU was busy throughout."""
    if start is None or end is None:
        return None
    cpus = cpus or os.cpu_count() or 1
    wall = end.wall_s - start.wall_s
    if wall <= 0:
        return None
    own = max(end.own_s - start.own_s, 0.0)
    others = max(end.busy_s - start.busy_s - own, 0.0)
    # Timing on every CPU leaves almost nothing free: a few ms of others over ~0 would read 100%.
    free = max(cpus * wall - own, 0.1 * cpus * wall)
    return {"others_busy": round(min(others / free, 1.0), 3),
            "steal": round(min(max(end.steal_s - start.steal_s, 0.0) / (cpus * wall), 1.0), 3),
            "cpus": cpus, "seconds": round(wall, 2)}


def busy_text(load: dict | None, hint: str = "") -> str | None:
    """One line where other work on the machine may have moved the figure, else None; `hint` ends it
    (what to run again)."""
    if not load:
        return None
    parts = []
    if load["others_busy"] >= BUSY_FROM:
        parts.append(f"other processes used {load['others_busy']:.0%} of the CPU time this measurement left free")
    if load["steal"] >= BUSY_FROM:
        parts.append(f"the hypervisor gave {load['steal']:.0%} of this machine's CPU time to other guests")
    if not parts:
        return None
    return ("; ".join(parts) + ": work beside a measurement can slow the two models unequally, so this speedup "
            f"may differ on a quiet machine{hint}")
