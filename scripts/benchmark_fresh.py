"""Keep a model fresh day by day: fine-tune (a), retrain from scratch (b) or keep (c); accuracy and training time.

python scripts/benchmark_fresh.py --data ../shared/data/yoochoose-100k/train_full.tsv --days 4 --epochs 10 \
    --fine-tune-epochs 3 --output logs/fresh [--fine-tune OVERRIDE ...] -- [train overrides for every run]

See lstm_rec/jobs/fresh.py for the protocol; prints a table and writes OUTPUT/fresh.json.
"""

import argparse
import json
import logging
from pathlib import Path

from lstm_rec.jobs.fresh import benchmark_fresh, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the click log (train_full) to split by time")
    parser.add_argument("--days", type=int, default=4, help="later days after the initial part")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the initial and the from-scratch runs")
    parser.add_argument("--fine-tune-epochs", type=int, default=3, help="epochs of each fine-tuning run")
    parser.add_argument("--fine-tune", nargs="*", default=[], help="train overrides for the fine-tuning runs only")
    parser.add_argument("--replay-days", type=int, default=0, help="fine-tune on the day and this many days before")
    parser.add_argument(
        "--day-seconds", type=float, default=86_400.0, help="a day's length in the Time column (604800: weeks)"
    )
    parser.add_argument("--output", type=Path, required=True, help="directory of the runs and fresh.json")
    parser.add_argument("overrides", nargs="*", help="train overrides for every run (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = benchmark_fresh(
        args.data,
        args.output,
        args.days,
        args.epochs,
        args.fine_tune_epochs,
        args.overrides,
        args.fine_tune,
        args.replay_days,
        args.day_seconds,
    )
    print(json.dumps({key: results[key] for key in ("total_train_seconds", "mean")}, indent=2))
    print(table(results))
    print(f"outputs: {args.output}")


if __name__ == "__main__":
    main()
