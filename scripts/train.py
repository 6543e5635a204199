"""Train an LSTM session recommender: python scripts/train.py [overrides]; see conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from lstm_rec.jobs.report import metrics_table
from lstm_rec.jobs.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    if "output_dir" not in metrics:  # another process of a distributed run; the first one reports
        return None
    print(metrics_table(metrics, cfg.model.ks))
    print(f"outputs: {metrics['output_dir']}")
    # The tested checkpoint: the refit's when the run refitted; none saved without a checkpoint callback.
    print(f"model: {metrics['checkpoint'] or 'not saved (no checkpoint callback): the final weights were tested'}")
    return metrics.get(cfg.monitor)  # the value an optimizing sweeper maximizes


if __name__ == "__main__":
    main()
