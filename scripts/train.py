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
    # The tested checkpoint: the refit's when the run refitted; None when the run saved none.
    print(f"model: {metrics['checkpoint'] or 'none saved (the weights at the end of training were tested)'}")
    return metrics.get(cfg.monitor)  # the value an optimizing sweeper maximizes


if __name__ == "__main__":
    main()
