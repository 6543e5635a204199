"""val/loss (the training loss on the validation split, dropout off) and every run's curves.png."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

import lstm_rec.module
from conftest import TINY, compose_config
from lstm_rec.callbacks import TrainingCurves
from lstm_rec.data import ItemIndex
from lstm_rec.jobs.plots import curve_panels, training_curves
from lstm_rec.jobs.train import train
from lstm_rec.losses import BPRMax, SampledSoftmax
from lstm_rec.module import SessionRecModule

# The end-to-end runs: TINY on fewer sessions.
SMALL = [*TINY, "data.n_sessions=1000", "~blend"]  # metrics.json's val/ metrics as the curves' (no blend)

# Two validation batches of 4 items: targets 2, 3, 4 (3 predictions), then 1 (1 prediction).
BATCHES = [torch.tensor([[1, 2, 3, 0], [2, 4, 0, 0]]), torch.tensor([[3, 1]])]
BIAS = torch.tensor([0.0, 1.0, 2.0, 3.0])  # item j + 1's score whatever the state, with zero output weights
LOG_SUM_EXP = math.log(1 + math.e + math.e**2 + math.e**3)
# Target biases 1, 2, 3 and 0: the mean per prediction is LOG_SUM_EXP - 1.5 (per batch weighted by sessions,
# it would be LOG_SUM_EXP - 4/3).
BY_HAND = LOG_SUM_EXP - 1.5


def four_item_module(members: list[dict] | None = None, **settings) -> SessionRecModule:
    index = ItemIndex(np.array([10, 11, 12, 13]), np.array([5, 4, 3, 2]))
    return SessionRecModule(index, ks=[2], hidden=8, embedding_dim=8, dropout=0.5, embedding_dropout=0.5,
                            members=members, **settings)  # fmt: skip


def validate(module: SessionRecModule, batches: list[torch.Tensor]) -> float:
    """val/loss of one validation through Lightning, as logged."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    value = trainer.validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)[0]["val/loss"]
    assert trainer.progress_bar_metrics["val/loss"] == pytest.approx(value, nan_ok=True)
    return value


def test_cross_entropy_val_loss_by_hand():
    module = four_item_module()
    with torch.no_grad():
        module.net.output.weight.zero_()
        module.net.output.bias.copy_(BIAS)
    assert validate(module, BATCHES) == pytest.approx(BY_HAND, rel=1e-6)
    assert module.validation_loss(BATCHES) == pytest.approx(BY_HAND, rel=1e-6)
    # One session per loss batch, one prediction's scores at a time: the same value.
    for settings in ({"loss_batch_size": 1}, {"max_scores": 4}):
        cut = four_item_module(**settings)
        cut.load_state_dict(module.state_dict())
        assert cut.validation_loss(BATCHES) == pytest.approx(BY_HAND, rel=1e-6)


def test_ensemble_val_loss_is_the_members_mean():
    module = four_item_module(members=[{}, {"dropout": 0.2}])
    with torch.no_grad():
        module.net.output.weight.zero_()
        module.net.output.bias.copy_(torch.stack([torch.zeros(4), BIAS]))  # member 0 loses log 4 everywhere
    assert validate(module, BATCHES) == pytest.approx((math.log(4) + BY_HAND) / 2, rel=1e-6)


def test_a_nan_val_loss_shows_as_nan():
    module = four_item_module()
    with torch.no_grad():
        module.net.output.bias[0, 2] = float("nan")
    assert math.isnan(validate(module, BATCHES))


def test_val_loss_has_dropout_off_and_leaves_the_mode():
    torch.manual_seed(0)
    module = four_item_module()
    module.train()
    value = module.validation_loss(BATCHES)
    assert module.training
    module.eval()
    with torch.no_grad():
        logits = [module.net.score(module.net.encode(b[:, :-1]))[b[:, 1:] > 0] for b in BATCHES]
    targets = torch.cat([b[:, 1:][b[:, 1:] > 0] - 1 for b in BATCHES])
    assert value == pytest.approx(float(torch.nn.functional.cross_entropy(torch.cat(logits), targets)), rel=1e-6)
    module.train()  # with dropout on, the value would differ
    with torch.no_grad():
        logits = [module.net.score(module.net.encode(b[:, :-1]))[b[:, 1:] > 0] for b in BATCHES]
    assert value != pytest.approx(float(torch.nn.functional.cross_entropy(torch.cat(logits), targets)), rel=1e-3)


@pytest.mark.parametrize("layout", ["compact", "padded"])
@pytest.mark.parametrize("loss", [SampledSoftmax, BPRMax])
def test_sampled_val_loss_is_the_same_at_every_validation(loss, layout, monkeypatch):
    torch.manual_seed(0)
    index = ItemIndex(np.arange(50), np.arange(1, 51))
    sampled = loss(n_negatives=8, layout=layout)
    module = SessionRecModule(index, loss=sampled, ks=[5], loss_batch_size=2, hidden=8, embedding_dim=8)
    batches = [torch.randint(1, 51, (6, 5)), torch.randint(1, 51, (3, 7))]
    first = validate(module, batches)
    assert validate(module, batches) == first
    state = torch.get_rng_state()
    assert module.validation_loss(batches) == pytest.approx(first, rel=1e-6)
    assert torch.equal(torch.get_rng_state(), state)  # the training's random stream goes on undisturbed
    # The draws are fixed, not absent: another seed draws other candidates and gives another value.
    monkeypatch.setattr(lstm_rec.module, "VALIDATION_SEED", 1)
    assert validate(module, batches) != pytest.approx(first, rel=1e-6)


def per_epoch(name: str) -> bool:
    return name.startswith("val/") or name == "train/loss_epoch"


def logged_per_epoch(out: Path, logger: str) -> pd.DataFrame:
    """Every per-epoch value the run logged, one row per epoch (1, 2, ...), read from its logger's files."""
    if logger == "csv":
        rows = pd.read_csv(out / "csv" / "metrics.csv")
        table = rows.groupby("epoch")[[c for c in rows if per_epoch(c)]].last().dropna(how="all")
        return table.set_axis(table.index.astype(int) + 1).rename_axis("epoch")
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch")}
    tags = [t for t in events.Tags()["scalars"] if per_epoch(t)]
    return pd.DataFrame({t: {epoch_at[e.step] + 1: e.value for e in events.Scalars(t)} for t in tags}).sort_index()


def kept_per_epoch(out: Path) -> dict[int, dict[str, float]]:
    """What the curves callback kept, as the run's last checkpoint carries it."""
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["TrainingCurves"]["epochs"]


def plotted(out: Path) -> dict[str, pd.DataFrame]:
    return curve_panels(kept_per_epoch(out))


def assert_curves_are_the_logged_values(out: Path, logger: str, epochs: int) -> None:
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert training_curves(kept_per_epoch(out), out / "again.png").read_bytes() == png  # drawn from these values
    panels, logged = plotted(out), logged_per_epoch(out, logger)
    assert list(panels["loss"]) == ["train/loss_epoch", "val/loss"]
    assert list(panels["recall"]) == ["val/recall@5", "val/recall@10", "val/recall@20"]
    assert list(panels["mrr"]) == ["val/mrr@5", "val/mrr@10", "val/mrr@20"]
    for table in panels.values():
        assert list(table.index) == list(range(1, epochs + 1)) == list(logged.index)
        for name in table:
            np.testing.assert_allclose(table[name].to_numpy(), logged[name].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("logger", ["tensorboard", "csv"])
def test_a_run_stopped_early_writes_val_loss_and_its_curves(logger, tmp_path):
    # Early stopping after the first epoch that does not gain 1.0 MRR@20: the second of three (Lightning's rule: no
    # tolerance, under which an epoch near the best would start the patience again).
    stop = ["callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=1.0", "monitor_tolerance=0"]
    out = tmp_path / "run"
    metrics = train(compose_config("train", [*SMALL, "trainer.max_epochs=3", *stop, f"logger={logger}"], out))
    assert metrics["epochs"] == 2
    assert_curves_are_the_logged_values(out, logger, epochs=2)
    # metrics.json: val/loss of the tested checkpoint on all validation sessions, as every epoch's validation
    # (data.valid_sample is null).
    saved, logged = json.loads((out / "metrics.json").read_text()), logged_per_epoch(out, logger)
    tested_epoch = int(Path(metrics["checkpoint"]).stem.split("_")[1]) + 1
    assert saved["val/loss"] == pytest.approx(logged.loc[tested_epoch, "val/loss"], rel=1e-5)
    assert saved["val/mrr@20"] == pytest.approx(logged.loc[tested_epoch, "val/mrr@20"], rel=1e-5)


def test_a_resumed_run_draws_all_its_epochs(tmp_path):
    out = tmp_path / "run"
    overrides = [*SMALL, "callbacks.early_stopping=null"]
    train(compose_config("train", [*overrides, "trainer.max_epochs=1"], out))
    first = plotted(out)["loss"]
    (out / "curves.png").unlink()
    train(compose_config("train", [*overrides, "trainer.max_epochs=2", "ckpt_path=last"], out))
    assert_curves_are_the_logged_values(out, "tensorboard", epochs=2)
    pd.testing.assert_frame_equal(plotted(out)["loss"].loc[[1]], first)


def test_a_figure_that_cannot_be_drawn_is_a_warning(tmp_path, caplog):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    curves = TrainingCurves(blocked / "curves.png")
    curves.epochs = {1: {"train/loss_epoch": 2.0, "val/loss": 1.5, "val/recall@20": 0.3, "val/mrr@20": 0.1}}
    curves.on_fit_end(SimpleNamespace(is_global_zero=True), None)
    assert "could not draw the training curves" in caplog.text
    curves.path = tmp_path / "curves.png"
    curves.on_exception(SimpleNamespace(is_global_zero=True), None, KeyboardInterrupt())  # a failed run draws too
    assert curves.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class StepLosses(L.Callback):
    """Each training step's loss as returned, with its weight (the sessions of a window batch)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((float(outputs["loss"]), len(batch)))


@pytest.mark.parametrize("every", [1, 2, 4, 50])
def test_train_loss_epoch_is_the_mean_over_every_step_whichever_steps_are_logged(every):
    """train/loss is handed to Lightning only at the logger's steps and the epoch's last one; the epoch's value still
    weighs every step by its sessions, and train/loss_step is the latest logged step's loss."""
    torch.manual_seed(0)
    batches = [torch.tensor([[1, 2, 3, 0], [2, 4, 0, 0]]), torch.tensor([[3, 1]]), torch.tensor([[4, 3, 2]])] * 3
    steps = StepLosses()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, max_epochs=2, log_every_n_steps=every, callbacks=[steps],
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(four_item_module(), train_dataloaders=DataLoader(batches, batch_size=None))
    last_epoch = steps.steps[len(batches) :]
    losses, weights = np.array([loss for loss, _ in last_epoch]), np.array([size for _, size in last_epoch])
    assert trainer.callback_metrics["train/loss_epoch"].item() == pytest.approx(np.average(losses, weights=weights))
    assert trainer.callback_metrics["train/loss_step"].item() == pytest.approx(losses[-1])
