"""Export the scoring step: python scripts/export.py ckpt_path=PATH format=onnx|torchscript output=FILE."""

import hydra
from omegaconf import DictConfig

from lstm_rec.serving.export import export


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    path = export(cfg.ckpt_path, cfg.format, cfg.output, cfg.top_k, cfg.without_blend)
    print(f"exported {cfg.format} to {path} (item ids in {path}.items.json)")


if __name__ == "__main__":
    main()
