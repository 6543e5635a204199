"""Every option of every config group composes, and the objects it names can be built."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from conftest import CONF, compose_config
from lstm_rec.data import ItemIndex
from lstm_rec.jobs.runs import instantiate_all


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in [
        "data",
        "model",
        "model/optimizer",
        "model/scheduler",
        "model/loss",
        "prior",
        "trainer",
        "callbacks",
        "logger",
        "experiment",
    ]:
        assert options(group), group


@pytest.mark.parametrize("option", options("data"))
def test_data_options(option, tmp_path):
    cfg = compose_config("train", [f"data={option}"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size


def test_yoochoose_paths_follow_the_shared_data_setting(tmp_path):
    cfg = compose_config("train", ["data=yoochoose_100k", "paths.shared_data=/elsewhere"], tmp_path)
    assert cfg.data.train == "/elsewhere/yoochoose-100k/train_full.tsv"
    cfg = compose_config("train", ["data=yoochoose_100k", "data.train=/mine.csv"], tmp_path)
    assert cfg.data.train == "/mine.csv"


@pytest.mark.parametrize("optimizer", options("model/optimizer"))
@pytest.mark.parametrize("scheduler", [None, *options("model/scheduler")])
def test_model_optimizer_scheduler_options(optimizer, scheduler, tmp_path):
    schedule = f"model/scheduler={scheduler}" if scheduler else "model.scheduler=null"  # null: a constant rate
    overrides = [f"model/optimizer={optimizer}", schedule]
    # model.cell=auto needs the training data (build_model resolves it); built directly, the cell is given.
    cfg = compose_config("train", ["model.hidden=12", "model.cell=lstm", *overrides], tmp_path)
    model = instantiate(cfg.model, item_index=ItemIndex.from_items(np.arange(10)))
    assert model.net.hidden_size == 12
    model._trainer = SimpleNamespace(estimated_stepping_batches=100)  # what a fitting trainer would say
    configured = model.configure_optimizers()
    classes = {"adagrad_momentum": "AdagradMomentum"}  # the config name of each optimizer class not named alike
    assert type(configured["optimizer"]).__name__.lower() == classes.get(optimizer, optimizer).lower()
    assert ("lr_scheduler" in configured) == (scheduler is not None)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option, tmp_path):
    cfg = compose_config("train", [f"trainer={option}"], tmp_path)
    assert cfg.trainer.accelerator == {"gpu": "gpu"}.get(option, "cpu")
    if option != "gpu":  # no GPU here: compose only
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
        assert trainer.max_epochs == cfg.trainer.max_epochs


def test_gpu_flags_compose_as_the_readme_shows(tmp_path):
    cfg = compose_config(
        "train", ["model.hidden=256", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed"], tmp_path
    )
    assert (cfg.model.hidden, cfg.trainer.accelerator, cfg.trainer.precision) == (256, "gpu", "bf16-mixed")


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_options(option, tmp_path):
    cfg = compose_config("train", [f"callbacks={option}"], tmp_path)
    callbacks = instantiate_all(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    assert {"LatestCheckpoint", "PlateauEarlyStopping", "LearningRateMonitor"} <= names
    assert any(isinstance(c, ModelCheckpoint) for c in callbacks)  # what trainer.checkpoint_callback finds
    assert cfg.callbacks.model_checkpoint.monitor == cfg.monitor == cfg.callbacks.early_stopping.monitor


def test_early_stopping_can_be_switched_off(tmp_path):
    cfg = compose_config("train", ["callbacks.early_stopping=null"], tmp_path)
    assert "EarlyStopping" not in {type(c).__name__ for c in instantiate_all(cfg.callbacks)}


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(option, tmp_path):
    cfg = compose_config("train", [f"logger={option}"], tmp_path)
    (logger,) = instantiate_all(cfg.logger)
    assert option in type(logger).__name__.lower()


def test_no_logger(tmp_path):
    assert instantiate_all(compose_config("train", ["~logger"], tmp_path).get("logger")) == []


@pytest.mark.parametrize("option", [option for option in options("experiment") if option.startswith("yoochoose")])
def test_experiment_options(option, tmp_path):
    cfg = compose_config("train", [f"experiment={option}"], tmp_path)
    assert cfg.data._target_.endswith("FileDataModule")
    assert "yoochoose-100k" in cfg.data.train
    instantiate(cfg.data)


def test_the_ensemble_preset_is_the_defaults_with_four_members_and_no_prior_or_blend(tmp_path):
    assert set(options("experiment")) - {"ensemble"} == {
        "yoochoose_100k",
        "yoochoose_100k_fast",
        "yoochoose_100k_tuning",
    }
    defaults = OmegaConf.to_container(compose_config("train", [], tmp_path))
    ensemble = OmegaConf.to_container(compose_config("train", ["experiment=ensemble"], tmp_path))
    assert defaults["model"].pop("members") is None
    assert ensemble["model"].pop("members") == [{}, {}, {"repeat_window": 10}, {"repeat_window": 5}]
    # No prior, as the preset was measured (prior=auto after it chooses one); the defaults choose it per log.
    assert "prior" not in ensemble and defaults.pop("prior")["_target_"] == "lstm_rec.prior.RecentPopularitySearch"
    assert "blend" not in ensemble and defaults.pop("blend")["_target_"] == "lstm_rec.blend.KNNBlendSearch"
    assert ensemble == defaults  # nothing else: the data-derived defaults apply to any log
    again = compose_config("train", ["experiment=ensemble", "prior=auto", "blend=auto"], tmp_path)
    assert again.prior._target_ == "lstm_rec.prior.RecentPopularitySearch"
    assert again.blend._target_ == "lstm_rec.blend.KNNBlendSearch"


def test_eval_config(tmp_path):
    cfg = compose_config("eval", ["ckpt_path=x.ckpt", "data=files", "data.test=t.tsv"], tmp_path)
    assert cfg.ckpt_path == "x.ckpt"
    assert cfg.data.train is None
    assert cfg.data.valid_fraction == 0.0  # baselines fit on all of data.train


@pytest.mark.parametrize("name", list(compose_config("eval", [], Path("/tmp")).baselines))
def test_every_baseline_option_builds(name, tmp_path):
    cfg = compose_config("eval", [], tmp_path)
    assert hasattr(instantiate(cfg.baselines[name]), "fit")


def test_monitor_tolerance_reaches_both_callbacks_and_tune_trials_take_none(tmp_path):
    train_cfg = compose_config("train", [], tmp_path / "train")
    assert train_cfg.monitor_tolerance == 0.01
    assert train_cfg.callbacks.model_checkpoint.tolerance == train_cfg.callbacks.early_stopping.tolerance == 0.01
    tune_cfg = compose_config("tune", [], tmp_path / "tune")  # trials stop on a plateau; final_epochs_tolerance stays
    assert tune_cfg.callbacks.model_checkpoint.tolerance == tune_cfg.callbacks.early_stopping.tolerance == 0.0
    assert tune_cfg.final_epochs_tolerance == 0.01
