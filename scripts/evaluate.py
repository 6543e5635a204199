"""Evaluate a checkpoint: python scripts/evaluate.py ckpt_path=PATH data=files data.test=PATH."""

import hydra
from omegaconf import DictConfig

from lstm_rec.evaluate import evaluate_checkpoint
from lstm_rec.report import metrics_table


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    metrics = evaluate_checkpoint(cfg)
    ks = sorted({int(key.split("@")[1]) for key in metrics if key.startswith("test/recall@")})
    print(metrics_table(metrics, ks, splits=("test",)))
    print(f"outputs: {metrics['output_dir']}")


if __name__ == "__main__":
    main()
