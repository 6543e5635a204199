"""Prepare a raw click log for training: python scripts/prepare_data.py dataset=RECIPE input=PATH output=DIR;
see conf/prepare_data.yaml and conf/dataset/."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lstm_rec.prepare import prepare_data, train_commands


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    result = prepare_data(cfg)
    stats_md = Path(result["files"]["test"]).parent / "stats.md"
    print(f"{stats_md}:\n\n{stats_md.read_text()}")
    print("Train on it (final run, then tuning without the test set):")
    print("\n".join(train_commands(result["files"])))


if __name__ == "__main__":
    main()
