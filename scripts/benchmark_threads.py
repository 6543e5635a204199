"""How much a busy neighbour slows a training run, for each thread setting.

    python scripts/benchmark_threads.py [--settings null auto 1] [--models preset default] [--repeats 1]

Runs `scripts/train.py ... trainer.max_epochs=1` alone and next to one busy single-threaded process
(`python -c "while True: pass"`), for each model and `num_threads` setting, and prints the wall
seconds of each whole command and the slowdown. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "preset": ["experiment=yoochoose_100k"],
    "default": ["data=yoochoose_100k"],
}
BUSY = [sys.executable, "-c", "while True: pass"]


def run_once(model: str, setting: str, busy: bool, workdir: Path) -> float:
    """Wall seconds of one whole training command (1 epoch, test included)."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *MODELS[model], "trainer.max_epochs=1"]
    command += [f"num_threads={setting}", f"hydra.run.dir={workdir / f'{model}-{setting}-{busy}'}"]
    neighbour = subprocess.Popen(BUSY) if busy else None
    try:
        if neighbour is not None:
            time.sleep(1.0)  # running before the run starts, as a neighbour already at work would be
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["null", "auto", "1"], help="num_threads values")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each cell; the table shows the fastest")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for setting in args.settings:
                alone = min(run_once(model, setting, False, Path(tmp)) for _ in range(args.repeats))
                busy = min(run_once(model, setting, True, Path(tmp)) for _ in range(args.repeats))
                rows.append((model, setting, alone, busy))
                print(
                    f"{model} num_threads={setting}: alone {alone:.1f} s, next to a busy process {busy:.1f} s",
                    flush=True,
                )
    print("\n| model | num_threads | alone (s) | next to a busy process (s) | slowdown |")
    print("|---|---|---:|---:|---:|")
    for model, setting, alone, busy in rows:
        print(f"| {model} | {setting} | {alone:.1f} | {busy:.1f} | {busy / alone:.2f}x |")


if __name__ == "__main__":
    main()
