"""Benchmark training and evaluation: python scripts/benchmark.py [overrides]; see conf/benchmark.yaml."""

import json

import hydra
from omegaconf import DictConfig

from lstm_rec.jobs.benchmark import benchmark


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    print(json.dumps(benchmark(cfg), indent=2))
    print(f"outputs: {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
