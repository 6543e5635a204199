"""The evaluation job: test a saved checkpoint on click data, beside popularity, and write metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from lstm_rec.baselines import Popularity
from lstm_rec.checkpoint import load_module
from lstm_rec.evaluation import evaluate
from lstm_rec.report import write_json
from lstm_rec.train import prepare_run


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Test metrics of ``cfg.ckpt_path`` on ``cfg.data``'s test set; the item index comes from the checkpoint."""
    prepare_run(cfg)
    model = load_module(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    datamodule.item_index = model.item_index
    datamodule.setup("test")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    metrics: dict[str, Any] = trainer.test(model, datamodule=datamodule)[0]
    popularity = Popularity(model.item_index.counts)
    metrics |= evaluate(
        popularity, datamodule.test_dataloader(), model.hparams.ks, "pop/test/", item_counts=model.item_index.counts
    )
    metrics |= {"checkpoint": str(cfg.ckpt_path), "output_dir": cfg.paths.output_dir}
    write_json(metrics, Path(cfg.paths.output_dir) / "metrics.json")
    return metrics
