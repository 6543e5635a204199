"""last.ckpt holds the latest epoch even when the monitored metric stopped improving (LatestCheckpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from lstm_rec.jobs.train import train


def _epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def test_last_checkpoint_is_the_latest_epoch_and_is_what_test_ckpt_last_tests(train_config):
    # mode=min on val/mrr@20 keeps the first epoch as "best" while the later, better epochs are not: Lightning's own
    # ModelCheckpoint then leaves last.ckpt at epoch 0.
    cfg = train_config(
        "callbacks.model_checkpoint.mode=min", "callbacks.early_stopping=null", "test_ckpt=last", "logger=csv"
    )
    metrics = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert _epoch_of(checkpoints / "epoch_000.ckpt") == 0
    assert _epoch_of(checkpoints / "last.ckpt") == cfg.trainer.max_epochs - 1 == 2
    assert metrics["checkpoint"] == str(checkpoints / "last.ckpt")
    final_val = metrics["val/mrr@20"]  # metrics.json's val/ metrics are the tested checkpoint's
    best_val = torch.load(checkpoints / "epoch_000.ckpt", map_location="cpu", weights_only=True)
    monitored = next(v for k, v in best_val["callbacks"].items() if "LatestCheckpoint" in k)["best_model_score"]
    assert final_val > float(monitored)  # training went on improving after the epoch kept as "best"
    # ckpt_path=last resumes from here: after epoch 2, not from the first epoch.
