"""Faults: a killed run resumes, a crash never truncates a checkpoint, NaN losses and bad output folders stop early."""

import errno
import json
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_config, run_script
from lstm_rec.callbacks import AtomicCheckpointIO
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.jobs.runs import OutputDirError, find_run_to_resume
from lstm_rec.jobs.train import train
from lstm_rec.module import NonFiniteLossError, SessionRecModule


class PoisonBatches(L.Callback):
    """Test helper: makes the loss NaN at the given (epoch, batch) pairs by poisoning the item embeddings."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = {tuple(b) for b in batches}
        self.hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) in self.batches:
            embedding = pl_module.net.embedding_dropout  # the embedded clicks pass through it
            self.hook = embedding.register_forward_hook(lambda module, inputs, output: output * float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def poisoned(batches: str) -> list[str]:
    return ["+callbacks.poison._target_=test_faults.PoisonBatches", f"+callbacks.poison.batches={batches}"]


def test_a_nan_loss_stops_the_run_naming_its_step_and_saves_no_checkpoint(tmp_path):
    cfg = compose_config("train", [*TINY, *poisoned("[[0,5]]")], tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(epoch 0, batch 5\)"):
        train(cfg)
    assert not list((tmp_path / "run").glob("**/*.ckpt"))


def test_the_nan_check_runs_between_epochs_too(tmp_path):
    # Checked every 2 steps here: the run stops at step 6, before the end of the first epoch.
    overrides = [*TINY, *poisoned("[[0,5]]"), "model.nonfinite_check_every=2"]
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(epoch 0, batch 5\)") as stopped:
        train(compose_config("train", overrides, tmp_path / "run"))
    assert "model.nonfinite_loss=skip" in str(stopped.value)


def test_skip_drops_exactly_the_nan_batches(tmp_path, caplog):
    cfg = compose_config("train", [*TINY, *poisoned("[[0,5],[1,3]]"), "model.nonfinite_loss=skip"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["skipped_batches"] == 2
    assert "training loss is not finite at step 5 (epoch 0, batch 5)" in caplog.text
    data = instantiate(cfg.data)
    data.setup("fit")
    steps_per_epoch = len(data.train_dataloader())
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # Every batch counts as a step, but Adam updated the weights for all but the two skipped ones.
    assert last["global_step"] == 3 * steps_per_epoch
    assert all(state["step"] == 3 * steps_per_epoch - 2 for state in last["optimizer_states"][0]["state"].values())
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]


def test_weights_that_are_not_finite_are_never_saved():
    module = SessionRecModule(ItemIndex.from_items([1, 2, 3]), embedding_dim=4, hidden=4)
    with torch.no_grad():
        module.net.lstms[0].weight_hh_l0[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"net\.lstms\.0\.weight_hh_l0"):
        module.on_save_checkpoint({})


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)

    def disk_full_halfway(obj, file):
        file.write(b"the first half of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_halfway)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_the_trainer_writes_checkpoints_atomically(tmp_path):
    trainer = instantiate(compose_config("train", TINY, tmp_path).trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_an_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputDirError, match=r"paths.output_dir: cannot write to .*a file/run.*paths.log_dir=DIR"):
        train(compose_config("train", TINY, blocker / "run"))


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("lstm_rec.jobs.runs.shutil.disk_usage", lambda path: usage(2**30, 2**30 - 2**19, 2**19))
    with pytest.raises(OutputDirError, match=r"only 0 MiB free .* need about \d+ MiB"):
        train(compose_config("train", TINY, tmp_path / "run"))
    assert not list(tmp_path.glob("**/*.ckpt"))


def make_run(root, name, config, checkpoint=True, age=0.0):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    if checkpoint:
        (run / "checkpoints").mkdir()
        last = run / "checkpoints" / "last.ckpt"
        last.write_bytes(b"x")
        os.utime(last, (time.time() - age, time.time() - age))
    return run


def test_ckpt_path_last_finds_the_newest_run_of_the_same_configuration(tmp_path):
    config = {"seed": 1, "model": {"hidden": 8}, "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    older = make_run(tmp_path / "runs", "a", config, age=100)
    newer = make_run(tmp_path / "multiruns" / "x", "0", {**config, "ckpt_path": "last"}, age=10)
    make_run(tmp_path / "runs", "b", {**config, "seed": 2}, age=1)  # another configuration
    make_run(tmp_path / "runs", "c", config, checkpoint=False)  # nothing saved yet
    assert find_run_to_resume(tmp_path, {**config, "ckpt_path": "last"}) == newer
    (newer / "checkpoints" / "last.ckpt").unlink()
    assert find_run_to_resume(tmp_path, config) == older
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no run under .* has this configuration"):
        find_run_to_resume(tmp_path, {**config, "seed": 3})


@pytest.mark.slow
def test_a_killed_run_resumes_with_ckpt_path_last_and_matches_an_uninterrupted_run(tmp_path):
    # Dropout and a sampled loss: the resumed run must draw the same masks and negatives as the uninterrupted one;
    # Adagrad with the sparse item-table update (model.sparse_item_grad=auto) must restore its row sums.
    args = ["scripts/train.py", *TINY, "data.n_sessions=3000", "trainer.max_epochs=2", "num_threads=1"]
    args += ["model.dropout=0.5", "model/loss=bpr_max", "model/optimizer=adagrad", "model.optimizer.lr=0.1"]
    run_script(*args, f"paths.log_dir={tmp_path / 'whole'}")
    (whole,) = (tmp_path / "whole").glob("train/runs/*/metrics.json")
    expected = json.loads(whole.read_text())

    logs = tmp_path / "killed"
    killed = subprocess.Popen([sys.executable, *args, f"paths.log_dir={logs}"], cwd=ROOT, stdout=subprocess.DEVNULL)
    while not list(logs.glob("train/runs/*/checkpoints/last.ckpt")):  # the end of the first epoch
        assert killed.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (run_dir,) = logs.glob("train/runs/*")
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    time.sleep(1)  # the resuming invocation gets its own time-stamped Hydra folder
    run_script(*args, f"paths.log_dir={logs}", "ckpt_path=last")
    resumed = json.loads((run_dir / "metrics.json").read_text())  # finished in the killed run's own folder
    assert resumed["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["epochs"] == expected["epochs"] == 2
    for name in ("test/recall@20", "test/mrr@20", "val/mrr@20"):
        assert resumed[name] == pytest.approx(expected[name], abs=1e-6)


def test_an_unwritable_checkpoint_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    overrides = [*TINY, "trainer.max_epochs=1", f"callbacks.model_checkpoint.dirpath={blocker / 'ckpts'}"]
    with pytest.raises(OutputDirError, match=r"^callbacks.model_checkpoint.dirpath: cannot write to .*a file/ckpts"):
        train(compose_config("train", overrides, tmp_path / "run"))
    assert not (tmp_path / "run" / "tensorboard").exists()  # stopped before the first epoch


def run_train_script(monkeypatch, *args: str) -> None:
    """scripts/train.py in this process, as a user runs it (Hydra makes the run directory and the log file)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["scripts/train.py", *args])
    try:
        runpy.run_path(str(ROOT / "scripts" / "train.py"), run_name="__main__")
    finally:
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # as in a process that never ran Hydra's main


def test_ckpt_path_last_resumes_a_chosen_run_dir_and_leaves_no_stray_run_dir(tmp_path, monkeypatch):
    logs, chosen = tmp_path / "logs", tmp_path / "chosen"
    args = [*TINY, "data.n_sessions=600", "trainer.max_epochs=1", f"paths.log_dir={logs}"]
    run_train_script(monkeypatch, *args, f"hydra.run.dir={chosen}")

    # The same command plus ckpt_path=last resumes in the directory it chose, outside paths.log_dir.
    run_train_script(monkeypatch, *args, f"hydra.run.dir={chosen}", "ckpt_path=last")
    metrics = json.loads((chosen / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(chosen / "checkpoints" / "last.ckpt")
    assert (
        f"ckpt_path=last: resuming the run in this run's own directory {chosen}" in (chosen / "train.log").read_text()
    )

    # Under paths.log_dir, the run is found by its configuration from a new time-stamped directory, which is then
    # removed, its log moved into the run's own.
    found = logs / "train" / "found"
    shutil.copytree(chosen, found)
    first_log = (found / "train.log").read_text()
    run_train_script(monkeypatch, *args, "ckpt_path=last")
    assert list((logs / "train" / "runs").iterdir()) == []
    log = (found / "train.log").read_text()
    assert log.startswith(first_log)
    assert log.count(f"ckpt_path=last: resuming the run in {found} (1 matching runs found)") == 1
    assert f"Restoring states from the checkpoint path at {found / 'checkpoints' / 'last.ckpt'}" in log
    assert json.loads((found / "metrics.json").read_text())["output_dir"] == str(found)
