"""Tune on your own click log: python scripts/tune.py data=files data.train=PATH data.test=PATH budget_minutes=60;
see conf/tune.yaml. Writes the search's table and plots, the chosen configuration and the final test metrics."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lstm_rec.jobs.report import metrics_table
from lstm_rec.jobs.tune import tune


@hydra.main(version_base="1.3", config_path="../conf", config_name="tune")
def main(cfg: DictConfig) -> None:
    metrics = tune(cfg)
    print(metrics_table(metrics, cfg.model.ks))
    print(f"chosen: {(Path(cfg.paths.output_dir) / 'best_overrides.txt').read_text().strip()}")
    print(f"outputs: {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
