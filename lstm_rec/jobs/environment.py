"""The software and machine behind a run's figures, written as environment.json beside them.

The same code, configuration and seed give the same figures to every digit only with the same packages on the same
instruction set: on a 2-core AMD EPYC with AVX2 and a fresh install, the commit that had published the default
yoochoose-100k run's seed-42 test MRR@20 of 0.3839 (measured with AVX-512) gave 0.3854
(docs/experiments.md#reproducing-a-run). Speeds depend on the CPU and its threads.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lstm_rec.jobs.report import write_json

# The distributions whose versions can move a run's figures or speed (by their names on PyPI).
PACKAGES = (
    "lstm_rec", "torch", "lightning", "numpy", "pandas", "pyarrow", "numba", "scipy", "torchmetrics", "hydra-core",
    "omegaconf", "optuna",
)  # fmt: skip
FILENAME = "environment.json"


def environment() -> dict[str, Any]:
    """Python's and each of PACKAGES' versions (None: not installed), the source checkout's git commit (None outside
    one), the platform, the CPU's name, cores and the instruction set torch uses, torch's threads and the GPU's name
    (None: none visible)."""
    return {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        # The instruction set whose code paths torch's CPU kernels take (AVX2, AVX512, ...).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_environment(directory: str | Path) -> Path:
    """environment() as `directory`/environment.json."""
    return write_json(environment(), Path(directory) / FILENAME)


def git_commit(source: Path | None = None) -> str | None:
    """The commit of the git checkout that holds lstm_rec's source (`source`: another checkout's root), with "-dirty"
    when tracked files differ from it; None for an installed package outside a checkout, or without git."""
    root = Path(__file__).resolve().parents[2] if source is None else Path(source)
    if not (root / ".git").exists():  # only lstm_rec's own checkout, never a repository that happens to enclose it
        return None
    try:
        head = _git(root, "rev-parse", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if changed else "")


def cpu_name() -> str | None:
    """The CPU's model name as Linux reports it (platform.processor() elsewhere; None when neither says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
