"""Side by side with the official GRU4Rec: its code and ours, on the same data, threads and machine.

The official implementation (github.com/hidasib/GRU4Rec_PyTorch_Official) is run from the user's own
checkout, outside this repository, with its own `run.py`; nothing of it is copied here. It needs
pandas < 3 (see docs/results.md), so it may run under a different Python from ours.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RESULT = re.compile(r"^Recall@(\d+): ([0-9.]+) MRR@\1: ([0-9.]+)$", re.MULTILINE)
_TRAIN_TIME = re.compile(r"^Total training time: ([0-9.]+)s$", re.MULTILINE)


class ComparisonError(RuntimeError):
    """A side-by-side run could not be made or its output could not be read."""


@dataclass
class OfficialResult:
    """One training and evaluation run of the official code."""

    paramfile: str
    train_seconds: float
    recall: dict[int, float] = field(default_factory=dict)
    mrr: dict[int, float] = field(default_factory=dict)


def parse_official_output(text: str, paramfile: str = "") -> OfficialResult:
    """Training time and Recall@k / MRR@k from what the official run.py prints."""
    times = _TRAIN_TIME.findall(text)
    results = _RESULT.findall(text)
    if len(times) != 1 or not results:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise ComparisonError(
            f"the official GRU4Rec output for {paramfile or 'this run'} has {len(times)} 'Total training time' "
            f"lines and {len(results)} 'Recall@k: ... MRR@k: ...' lines, expected one and at least one; "
            f"its last lines:\n{tail}"
        )
    recall = {int(k): float(r) for k, r, _ in results}
    mrr = {int(k): float(m) for k, _, m in results}
    return OfficialResult(paramfile, float(times[0]), recall, mrr)


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a child process limited to `threads` compute threads."""
    return os.environ | {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def run_official(
    checkout: str | Path,
    python: str,
    paramfile: str,
    train: str | Path,
    test: str | Path,
    threads: int,
    ks: Sequence[int] = (5, 10, 20),
) -> OfficialResult:
    """Train and evaluate the official GRU4Rec on the CPU with pessimistic ties ("conservative")."""
    checkout = Path(checkout)
    run_py, params = checkout / "run.py", checkout / "paramfiles" / f"{paramfile}.py"
    for path, what in ((run_py, "the official run.py"), (params, f"the parameter file {paramfile!r}")):
        if not path.is_file():
            raise ComparisonError(f"{what} is not at {path}; --gru4rec must be a checkout of GRU4Rec_PyTorch_Official")
    command = [python, str(run_py), str(train), "-pf", str(params), "-t", str(test), "-m", *map(str, ks)]
    command += ["-e", "conservative", "-d", "cpu"]
    done = subprocess.run(command, cwd=checkout, env=thread_env(threads), capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise ComparisonError(f"the official GRU4Rec ({' '.join(command)}) failed with code {done.returncode}:\n{tail}")
    return parse_official_output(output, paramfile)


def run_ours(overrides: Sequence[str], targets: dict[str, float], threads: int, output_dir: Path) -> dict[str, Any]:
    """Our benchmark job with the given overrides, timing how long training takes to reach `targets`."""
    target = "target={" + ", ".join(f"{metric}: {value}" for metric, value in targets.items()) + "}"
    script = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"
    command = [sys.executable, str(script), *overrides, target, f"num_threads={threads}"]
    command.append(f"hydra.run.dir={output_dir}")
    done = subprocess.run(command, env=thread_env(threads), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ComparisonError(f"our benchmark ({' '.join(command)}) failed with code {done.returncode}:\n{tail}")
    return json.loads((output_dir / "benchmark.json").read_text())
