"""What a user gets with no model overrides: the recipe of conf/model/lstm.yaml and trainer.max_epochs=auto."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from lstm_rec.jobs.train import train

SMALL_DATA = ["data.n_sessions=3000", "data.n_items=200"]
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def test_the_default_recipe():
    cfg = compose_config("train", [], Path("unused"))
    model = cfg.model
    assert model.loss._target_ == "lstm_rec.losses.BPRMax"
    assert (model.loss.score_regularization, model.loss.elu, model.loss.sample_alpha) == (1.95, 0.5, 0.4)
    assert model.optimizer._target_ == "lstm_rec.optim.AdagradMomentum"
    assert (model.optimizer.lr, model.optimizer.momentum) == (0.05, 0.4)
    assert model.scheduler._target_ == "lstm_rec.schedules.warmup_decay" and model.scheduler.warmup_steps == 200
    assert (model.embedding_dim, model.hidden, model.tie_weights) == (224, 224, True)
    assert (model.dropout, model.embedding_dropout) == (0.05, 0.5)
    assert model.recurrent_init == "torch"
    assert (cfg.data.batching, cfg.data.batch_size, cfg.trainer.gradient_clip_val) == ("auto", "auto", None)
    assert dict(cfg.auto_batch_size) == {"small": 80, "large": 128, "large_from": 1_000_000}
    assert model.cell == "auto" and dict(cfg.auto_cell) == {"small": "lstm", "large": "gru", "large_from": 150_000}
    assert cfg.trainer.max_epochs == "auto" and cfg.callbacks.early_stopping.patience == 3
    assert (cfg.auto_epochs.targets, cfg.auto_epochs.low, cfg.auto_epochs.high) == (3_000_000, 3, 14)
    assert cfg.auto_epochs.minutes == 7.5  # fewer epochs where they would train longer (docs/experiments.md)
    assert model.scheduler.hold_fraction == 0.0
    assert cfg.refit == "auto" and cfg.auto_refit.min_share == 0.05


def test_real_logs_hold_out_at_most_10000_validation_predictions():
    cfg = compose_config("train", ["data=files"], Path("unused"))
    assert (cfg.data.valid_fraction, cfg.data.valid_max_predictions, cfg.data.valid_sample) == (0.1, 10_000, 2000)
    assert cfg.data.batch_size == "auto"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    # The default recipe for 4 epochs (test_auto_epochs_are_logged checks the 14 that auto picks for this data).
    out = tmp_path_factory.mktemp("defaults") / "run"
    return train(compose_config("train", [*SMALL_DATA, *QUIET, "trainer.max_epochs=4"], out)), out


@pytest.mark.slow
def test_the_defaults_learn_the_synthetic_sessions_far_better_than_popularity(default_run):
    metrics, _ = default_run
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/mrr@20"] > 2 * metrics["pop/test/mrr@20"]
    assert metrics["max_epochs"] == 4
    # refit=auto leaves the synthetic sessions (one unchanging process) alone: the validated network is tested.
    assert "refit_epochs" not in metrics and "/refit/" not in metrics["checkpoint"]


def test_recurrent_init_reaches_the_network_from_the_config(tmp_path):
    from hydra.utils import instantiate

    from lstm_rec.jobs.runs import build_model

    overrides = [*SMALL_DATA, *QUIET, "model.hidden=8", "model.embedding_dim=8", "model.recurrent_init=glorot"]
    cfg = compose_config("train", overrides, tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    assert model.network_settings["recurrent_init"] == "glorot"
    cell = model.net.lstms[0]
    assert torch.equal(cell.bias_ih_l0, torch.zeros_like(cell.bias_ih_l0))
    assert cell.weight_hh_l0.abs().max() > 8**-0.5  # beyond PyTorch's 1 / sqrt(8); Glorot's bound is (6 / 16) ** 0.5


def test_auto_epochs_are_logged(tmp_path, caplog):
    cfg = compose_config("train", [*SMALL_DATA, *QUIET, "model.hidden=8", "model.embedding_dim=8"], tmp_path)
    from hydra.utils import instantiate

    from lstm_rec.jobs.runs import build_model

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        model = build_model(cfg, datamodule)
    n_targets = datamodule.train_sessions.n_targets
    assert cfg.trainer.max_epochs == 14
    assert (
        f"14 epochs ({n_targets:,} training predictions an epoch, about 3,000,000 in all; the upper bound"
        in caplog.text
    )
    # A small log keeps the narrow steps, on the datamodule and in the config the run saves.
    assert datamodule.batch_size == cfg.data.batch_size == 80
    assert f"data.batch_size=auto: 80 ({n_targets:,} training predictions an epoch, fewer than 1,000,000" in caplog.text
    # and the LSTM, in the config the run saves and in the network.
    assert cfg.model.cell == "lstm" and isinstance(model.net.lstms[0], torch.nn.LSTM)
    assert f"model.cell=auto: lstm ({n_targets:,} training predictions an epoch, fewer than 150,000" in caplog.text


@pytest.mark.slow
def test_a_gru_trained_on_session_parallel_steps_beats_popularity_and_loads_back(tmp_path):
    from lstm_rec.checkpoint import load_network

    cfg = compose_config("train", [*SMALL_DATA, *QUIET, "trainer.max_epochs=4", "model.cell=gru"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/mrr@20"] > 2 * metrics["pop/test/mrr@20"]
    network = load_network(metrics["checkpoint"]).network
    assert network.cell == "gru" and isinstance(network.lstms[0], torch.nn.GRU)
