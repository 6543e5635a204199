"""Scale check of prepare_data on a synthetic raw yoochoose-clicks.dat; prints times and peak memory as JSON.

python scripts/benchmark_prepare.py [--events 30000000] [--recipe yoochoose|yoochoose_dedup] [--scramble]
    [--dir /tmp/prepare-benchmark] [--keep]
"""

import argparse
import json
import shutil
from pathlib import Path

from lstm_rec.prepare.benchmark import benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000_000, help="raw clicks to generate")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/prepare-benchmark"), help="where the files go")
    parser.add_argument("--recipe", default="yoochoose", choices=["yoochoose", "yoochoose_dedup"])
    parser.add_argument("--scramble", action="store_true", help="session ids out of order: preparing has to sort")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated and prepared files")
    args = parser.parse_args()
    try:
        report = benchmark(args.events, args.dir, ROOT, args.recipe, args.scramble, args.seed)
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
