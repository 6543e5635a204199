"""Report on a sweep: python scripts/summarize.py SWEEP_DIR [--sort-by METRIC] (default: the sweep's monitor).

Writes summary.md, summary.csv, objective_vs_<parameter>.png and learning_curves.png into SWEEP_DIR.
"""

import argparse

from lstm_rec.jobs.report import frame_to_markdown
from lstm_rec.jobs.sweep import summarize_sweep, summary_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir")
    parser.add_argument("--sort-by", default=None, help="metric to sort by; default: monitor in multirun.yaml")
    parser.add_argument("--best-curves", type=int, default=5, help="learning curves of this many best jobs")
    args = parser.parse_args()
    jobs = summarize_sweep(args.sweep_dir, args.sort_by, args.best_curves)
    if jobs.empty:
        raise SystemExit(f"no job under {args.sweep_dir} has a metrics.json")
    print(frame_to_markdown(jobs[summary_columns(jobs.columns)]))
    print(f"report written to {args.sweep_dir}")


if __name__ == "__main__":
    main()
