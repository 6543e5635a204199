"""Evaluate checkpoints and baselines on one test set: python scripts/evaluate.py ckpt_path=PATH data=files
data.test=PATH [data.train=PATH models=[pop,sr,sknn,vsknn]]; see conf/eval.yaml."""

import hydra
from omegaconf import DictConfig

from lstm_rec.jobs.compare import compare
from lstm_rec.jobs.report import comparison_table


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    results = compare(cfg)
    print(comparison_table(results, cfg.ks))
    print(f"outputs: {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
