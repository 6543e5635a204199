"""Time our LSTM against the official GRU4Rec, side by side in one run on this machine.

    python scripts/compare_gru4rec.py --gru4rec ~/GRU4Rec_PyTorch_Official --python ~/g4r/bin/python \
        [--runs 1] [--threads 2] [--paramfiles rsc15_xe_shared_100_best ...] \
        [--ours "experiment=yoochoose_100k" --ours "experiment=yoochoose_100k model.hidden=100 ..."]

Trains and evaluates each official parameter file on yoochoose-100k train_full -> test, then runs our
benchmark once per --ours (a string of train overrides; default experiment=yoochoose_100k) with the test
set as its validation set, and reports how much training time each of ours needed to reach each official
result (Recall@20 and MRR@20 both). Writes comparison.json and comparison.md under --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from lstm_rec.jobs.benchmark import time_to_target
from lstm_rec.jobs.gru4rec_official import run_official, run_ours

ROOT = Path(__file__).resolve().parents[1]


def seconds_to(run: dict, recall: float, mrr: float) -> float | None:
    """Training seconds of our benchmark `run` until its validation Recall@20 and MRR@20 reached both."""
    curves = run["val_curves"]
    curve = zip(run["epoch_seconds"], curves["val/recall@20"], curves["val/mrr@20"], strict=True)
    epochs = [{"train_seconds": s, "val/recall@20": r, "val/mrr@20": m} for s, r, m in curve]
    return time_to_target(epochs, {"val/recall@20": recall, "val/mrr@20": mrr})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gru4rec", required=True, help="a checkout of GRU4Rec_PyTorch_Official")
    parser.add_argument("--python", default=sys.executable, help="the Python to run it with (needs pandas < 3)")
    parser.add_argument(
        "--paramfiles", nargs="+", default=["rsc15_xe_shared_100_best", "retailrocket_bprmax_shared_best"]
    )
    parser.add_argument("--runs", type=int, default=1, help="official runs per parameter file (results averaged)")
    parser.add_argument("--threads", type=int, default=2, help="compute threads for both")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "yoochoose-100k"))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "compare_gru4rec" / time.strftime("%Y-%m-%d_%H-%M-%S")))
    parser.add_argument("--ours", action="append", help="our train overrides, space-separated (repeatable)")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = data / "train_full.tsv", data / "test.tsv"

    official = {}
    for paramfile in args.paramfiles:
        runs = [run_official(args.gru4rec, args.python, paramfile, train, test, args.threads) for _ in range(args.runs)]
        official[paramfile] = {
            "train_seconds": [r.train_seconds for r in runs],
            "recall@20": sum(r.recall[20] for r in runs) / len(runs),
            "mrr@20": sum(r.mrr[20] for r in runs) / len(runs),
        }
        print(paramfile, json.dumps(official[paramfile]), flush=True)

    targets = {
        "val/recall@20": max(o["recall@20"] for o in official.values()),
        "val/mrr@20": max(o["mrr@20"] for o in official.values()),
    }
    ours = {}
    for number, overrides in enumerate(args.ours or ["experiment=yoochoose_100k"]):
        run = run_ours([*overrides.split(), f"data.valid={test}"], targets, args.threads, out / f"ours_{number}")
        ours[overrides] = run
        print(overrides, json.dumps({k: run[k] for k in ("epoch_seconds", "val_curves")}), flush=True)

    lines = [
        "| method | training s | Recall@20 | MRR@20 | "
        + " | ".join(f"s to reach {paramfile} (× its time)" for paramfile in official)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(official),
    ]
    for paramfile, o in official.items():
        seconds = sum(o["train_seconds"]) / len(o["train_seconds"])
        o["mean_train_seconds"] = seconds
        lines.append(
            f"| official GRU4Rec `{paramfile}` | {seconds:.1f} | {o['recall@20']:.4f} | {o['mrr@20']:.4f} |"
            + " |" * len(official)
        )
    for overrides, run in ours.items():
        cells = []
        for paramfile, o in official.items():
            reach = seconds_to(run, o["recall@20"], o["mrr@20"])
            run.setdefault("seconds_to_reach", {})[paramfile] = reach
            cells.append("not reached" if reach is None else f"{reach:.1f} ({reach / o['mean_train_seconds']:.2f})")
        lines.append(
            f"| lstm_rec `{overrides}` | {sum(run['epoch_seconds']):.1f} | {run['test']['test/recall@20']:.4f} "
            f"| {run['test']['test/mrr@20']:.4f} | " + " | ".join(cells) + " |"
        )
    table = "\n".join(lines)
    result = {"threads": args.threads, "official": official, "ours": ours, "table": table}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "comparison.md").write_text(table + "\n")
    print(table)
    print(f"outputs: {out}")


if __name__ == "__main__":
    main()
