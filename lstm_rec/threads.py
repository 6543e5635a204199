"""How many CPU threads torch uses: all free cores, so that a busy neighbour does not stall every step.

torch's default is one thread per core. Its OpenMP threads wait for each other at the end of every
operation, so when another process runs on one of those cores, every operation waits for the thread
that shares it: next to one busy process a 2-core run went 3x slower (docs/operations.md has the
table and scripts/benchmark_threads.py measures it). ``auto`` counts the cores this process may use
and the other processes that are running at start, and takes the cores that are left, at least one.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

AUTO = "auto"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def other_running_processes(samples: int = 5, interval: float = 0.01, stat: str = "/proc/stat") -> int:
    """Runnable processes besides this one (the fewest seen in a few samples, so a blip does not count).

    Returns 0 where the kernel does not say (no /proc/stat).
    """
    counts = []
    for sample in range(samples):
        try:
            with open(stat) as file:
                running = next(int(line.split()[1]) for line in file if line.startswith("procs_running"))
        except (OSError, StopIteration, ValueError, IndexError):
            return 0
        counts.append(running - 1)  # this process is one of them
        if sample + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts))


def resolve_threads(setting: int | str | None, default: int) -> int | None:
    """The thread count for a `num_threads` setting: a number as given, ``auto`` the free cores, None torch's own.

    ``auto`` never exceeds `default`, torch's own choice (one per physical core, not per hyperthread).
    """
    if setting is None:
        return None
    if isinstance(setting, str) and setting.strip().lower() == AUTO:
        cores, busy = usable_cores(), other_running_processes()
        threads = max(1, min(default, cores - busy))
        log.info(
            "num_threads=auto: %d thread(s): %d usable core(s), %d other running process(es) at start, "
            "torch's default %d (set num_threads=N to choose)",
            threads,
            cores,
            busy,
            default,
        )
        return threads
    try:
        threads = int(setting)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1 or str(setting).strip() != str(threads):
        raise ValueError(f"num_threads={setting!r}: expected a positive whole number, 'auto' or null")
    return threads


_torch_default: int | None = None


def apply_threads(setting: int | str | None) -> int:
    """Set torch's intra-op threads from a `num_threads` setting; returns the count in use."""
    import torch

    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    threads = resolve_threads(setting, _torch_default)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
