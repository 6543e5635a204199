"""data.batching=parallel: session-parallel steps, the state carried from step to step (GRU4Rec's mini-batches)."""

from __future__ import annotations

import itertools
import logging
from typing import ClassVar

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, compose_config
from lstm_rec.checkpoint import load_network
from lstm_rec.data import FileDataModule
from lstm_rec.data.batching import ParallelStep, ParallelSteps, ParallelStepSampler, resolve_batching
from lstm_rec.data.sessions import ItemIndex, Sessions
from lstm_rec.jobs.train import train
from lstm_rec.losses import CrossEntropy
from lstm_rec.module import SessionRecModule

# Sessions of 3, 2, 1 (no target), 4 and 5 clicks: 2 + 1 + 3 + 4 = 10 targets.
LENGTHS = np.array([3, 2, 1, 4, 5])
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)])
ITEMS = np.arange(1, OFFSETS[-1] + 1)


def walk(sampler: ParallelStepSampler) -> list[list[tuple[int, int]]]:
    """Each step's [target position, lane] rows as tuples."""
    return [[tuple(row) for row in step.tolist()] for step in sampler]


def test_each_lane_reads_its_sessions_click_by_click_and_every_target_comes_once():
    sampler = ParallelStepSampler(LENGTHS, OFFSETS, width=2, seed=3)
    steps = walk(sampler)
    assert len(sampler) == len(steps)
    positions = [position for step in steps for position, _ in step]
    targets = [p for s in range(len(LENGTHS)) for p in range(OFFSETS[s] + 1, OFFSETS[s + 1])]
    assert sorted(positions) == targets  # every target once; the one-click session has none
    assert all(len({lane for _, lane in step}) == len(step) <= 2 for step in steps)  # a lane once per step
    session_of = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    for lane in (0, 1):  # a lane's positions: whole sessions, one after the other, without gaps
        mine = [(t, p) for t, step in enumerate(steps) for p, used in step if used == lane]
        for (t0, p0), (t1, p1) in itertools.pairwise(mine):
            assert t1 == t0 + 1  # a lane never idles before its last session
            assert p1 == p0 + 1 or (session_of[p1] != session_of[p0] and p1 == OFFSETS[session_of[p1]] + 1)
    # Lanes fill greedily: 10 targets over 2 lanes take at least 5 steps, and the lanes' loads differ by one session.
    assert 5 <= len(steps) <= 5 + LENGTHS.max()
    assert len(steps[0]) == 2


def test_the_order_follows_the_seed_and_epoch_or_the_time():
    sampler = ParallelStepSampler(LENGTHS, OFFSETS, width=2, seed=3)
    first = walk(sampler)
    assert walk(ParallelStepSampler(LENGTHS, OFFSETS, width=2, seed=3)) == first  # reproducible
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(map(tuple, walk(sampler))))
    assert len(orders) > 1  # a new permutation each epoch
    # order=time: sessions by the time of their first click, the same every epoch
    starts = np.array([40.0, 10.0, 0.0, 30.0, 20.0])
    timed = ParallelStepSampler(LENGTHS, OFFSETS, width=1, order="time", times=starts)
    first_clicks = [position for step in walk(timed) for position, _ in step if position - 1 in OFFSETS[:-1]]
    assert first_clicks == [OFFSETS[s] + 1 for s in (1, 4, 3, 0)]  # session 2 has no target
    timed.set_epoch(1)
    assert [p for step in walk(timed) for p, _ in step if p - 1 in OFFSETS[:-1]] == first_clicks


def test_more_lanes_than_sessions_and_bad_settings():
    steps = walk(ParallelStepSampler(LENGTHS, OFFSETS, width=16, seed=0))
    assert len(steps) == LENGTHS.max() - 1 and len(steps[0]) == 4  # four sessions with targets, side by side
    with pytest.raises(ValueError, match=r"lanes of session-parallel steps\) must be positive, got 0"):
        ParallelStepSampler(LENGTHS, OFFSETS, width=0)
    with pytest.raises(ValueError, match=r"data\.batching=parallel trains in one process"):
        ParallelStepSampler(LENGTHS, OFFSETS, width=2, num_replicas=2)
    with pytest.raises(ValueError, match=r"data\.order=time needs click times"):
        ParallelStepSampler(LENGTHS, OFFSETS, width=2, order="time")
    with pytest.raises(
        ValueError, match=r"data\.batching must be one of \['auto', 'windows', 'parallel'\], got 'steps'"
    ):
        FileDataModule(batching="steps")


def test_auto_batching_is_parallel_in_one_process_and_windows_in_several(caplog):
    with caplog.at_level("INFO", logger="lstm_rec.data.batching"):
        assert resolve_batching("auto", 1) == "parallel"
        assert resolve_batching("auto", 2) == "windows"
    assert "data.batching=auto: windows (2 processes" in caplog.text
    assert resolve_batching("windows", 1) == "windows" and resolve_batching("parallel", 1) == "parallel"


def test_a_step_holds_each_lanes_click_its_next_one_and_whether_a_session_starts():
    dataset = ParallelSteps(Sessions(ITEMS * 10, OFFSETS))
    step = dataset[np.array([[1, 0], [4, 1], [2, 0]])]
    assert isinstance(step, ParallelStep)
    assert step.slots.tolist() == [0, 1, 0] and step.reset.tolist() == [True, True, False]
    assert step.inputs.tolist() == [10, 40, 20] and step.targets.tolist() == [20, 50, 30]
    assert len(dataset) == 10


def test_carried_states_give_the_whole_sessions_states_and_loss():
    """With dropout off, the steps' losses, weighted by their pairs, sum to the loss of the whole sessions: each
    lane's state went on from its previous step, and restarted at zero for each new session."""
    torch.manual_seed(0)
    sessions = Sessions(ITEMS % 7 + 1, OFFSETS)
    module = SessionRecModule(net_items(), loss=CrossEntropy(), embedding_dim=8, hidden=8)
    module.eval()  # no dropout
    module.on_train_epoch_start()
    dataset, sampler = ParallelSteps(sessions), ParallelStepSampler(sessions.lengths, sessions.offsets, 2, seed=1)
    with torch.no_grad():
        total = sum(float(module._parallel_step_loss(dataset[rows])) * len(rows) for rows in sampler)
        padded = torch.zeros(len(LENGTHS), LENGTHS.max(), dtype=torch.long)
        for s in range(len(LENGTHS)):
            padded[s, : LENGTHS[s]] = torch.from_numpy(sessions.items[OFFSETS[s] : OFFSETS[s + 1]])
        whole = float(module.loss(module.net, module.net.encode(padded[:, :-1]), padded[:, 1:])) * 10
    assert total == pytest.approx(whole, rel=1e-5)
    assert not module._lanes.h.requires_grad  # the gradient reaches back one click only


def net_items() -> ItemIndex:
    return ItemIndex(ids=np.arange(1, 8), counts=np.ones(7, dtype=np.int64))


def test_parallel_training_learns_the_synthetic_shop(train_config):
    metrics = train(train_config("data.batching=parallel", "data.batch_size=32"))
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/mrr@20"] > 2 * metrics["pop/test/mrr@20"]
    assert metrics["epochs"] == 3


class CountSteps(L.Callback):
    """Test helper: each training epoch's steps, the steps Lightning expected, and the validations run."""

    runs: ClassVar[list[dict]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        CountSteps.runs.append({"expected": trainer.num_training_batches, "steps": 0, "validated": False})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        CountSteps.runs[-1]["steps"] += 1

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            CountSteps.runs[-1]["validated"] = True


def test_every_epoch_runs_its_own_steps_and_validates(train_config, tmp_path):
    CountSteps.runs = []
    counter = ["+callbacks.count._target_=test_parallel.CountSteps"]
    train(train_config("data.batching=parallel", "data.batch_size=32", "data.n_sessions=1500", *counter))
    assert len(CountSteps.runs) == 3
    assert all(run["steps"] == run["expected"] and run["validated"] for run in CountSteps.runs)
    assert len({run["steps"] for run in CountSteps.runs}) > 1  # the epochs' steps differ: the check has teeth
    with pytest.raises(ValueError, match=r"needs trainer.reload_dataloaders_every_n_epochs=1, got 0"):
        overrides = [*TINY, "data.batching=parallel", "trainer.reload_dataloaders_every_n_epochs=0"]
        train(compose_config("train", overrides, tmp_path / "another_run"))  # a new run needs its own directory


def test_a_skipped_step_leaves_no_nan_state_in_its_lanes(train_config):
    # The poisoned step's loss is NaN; its lanes restart from zero, so their sessions' next steps train normally.
    poison = ["+callbacks.poison._target_=test_faults.PoisonBatches", "+callbacks.poison.batches=[[0,5]]"]
    metrics = train(train_config("data.batching=parallel", "data.batch_size=32", "model.nonfinite_loss=skip", *poison))
    assert metrics["skipped_batches"] == 1
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]


def test_the_ensemble_preset_trains_on_session_parallel_steps_with_the_gru(tmp_path, caplog):
    # experiment=ensemble keeps the defaults' recipe: session-parallel steps, BPR-max, sparse Adagrad with momentum;
    # here with the GRU that auto takes on a large log. Each member carries its own state between steps.
    overrides = [
        "experiment=ensemble",
        "data.n_sessions=1500",
        "data.n_items=200",
        "model.hidden=32",
        "model.embedding_dim=32",
        "model.cell=gru",
        "trainer.max_epochs=3",
        "refit=false",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
    ]
    with caplog.at_level(logging.INFO):
        metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert "data.batching=auto: parallel" in caplog.text
    trained = load_network(metrics["checkpoint"])
    assert trained.network.n_members == 4 and trained.network.cell == "gru"
    assert trained.network.window_mask.sum(dim=(1, 2)).tolist() == [0, 0, 10, 5]  # each member's own window
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_several_steps_a_batch_train_exactly_as_one_step_a_batch(tmp_path, caplog):
    # The defaults' recipe (BPR-max, sparse Adagrad with momentum, a per-step warm-up and cosine schedule, dropout) on
    # session-parallel steps: 7 steps a batch under manual optimization, the last batch of each epoch shorter, give
    # the same weights, metrics and logged curves as one step a batch under Lightning's own optimizer steps.
    recipe = ["data.n_sessions=1500", "data.n_items=200", "model.hidden=32", "model.embedding_dim=32",
              "data.batch_size=16", "trainer.max_epochs=2", "~prior", "~blend", "refit=false",
              "trainer.log_every_n_steps=5"]  # fmt: skip
    runs = {}
    for k in (1, 7):
        with caplog.at_level(logging.INFO, logger="lstm_rec"):
            cfg = compose_config("train", [*recipe, f"data.steps_per_batch={k}"], tmp_path / f"k{k}")
            runs[k] = train(cfg)
    assert "data.steps_per_batch=7: 7 steps a batch" in caplog.text
    one, several = (torch.load(tmp_path / f"k{k}/checkpoints/last.ckpt", weights_only=False) for k in (1, 7))
    assert one["global_step"] == several["global_step"] > 100
    assert one["state_dict"].keys() == several["state_dict"].keys()
    for name, weights in one["state_dict"].items():
        assert torch.equal(weights, several["state_dict"][name]), name
    assert runs[1]["test/recall@20"] == runs[7]["test/recall@20"] and runs[1]["test/mrr@20"] == runs[7]["test/mrr@20"]
    for tag in ("train/loss_step", "train/loss_epoch", "val/mrr@20", "lr-AdagradMomentum"):
        assert scalars(tmp_path / "k1", tag) == scalars(tmp_path / "k7", tag), tag
    steps = [step for step, _ in scalars(tmp_path / "k7", "train/loss_step")]
    assert steps == list(range(4, steps[-1] + 1, 5))  # every 5th optimizer step, not every 5th batch of 7


def test_several_steps_a_batch_fall_back_to_one_where_lightning_steps_the_optimizer(tmp_path, caplog):
    overrides = [*TINY, "data.batching=parallel", "data.steps_per_batch=8", "trainer.max_epochs=1"]  # TINY clips
    with caplog.at_level(logging.INFO, logger="lstm_rec"):
        metrics = train(compose_config("train", overrides, tmp_path))
    assert "data.steps_per_batch=8: 1 step a batch: trainer.gradient_clip_val=1.0 needs" in caplog.text
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    # The sampler's batches of k steps: the epoch's steps in their order, the last batch shorter.
    one, four = (ParallelStepSampler(LENGTHS, OFFSETS, width=2, seed=3, steps_per_batch=k) for k in (1, 4))
    batches = list(four)
    assert [len(batch) for batch in batches] == [4, 2] and len(four) == 2 and four.n_steps == 6 == len(one)
    assert [step.tolist() for batch in batches for step in batch] == [step.tolist() for step in one]
    steps = ParallelSteps(Sessions(ITEMS, OFFSETS))[batches[0]]
    assert len(steps) == 4 and all(isinstance(step, ParallelStep) for step in steps)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"data.steps_per_batch must be a positive whole number"):
            ParallelStepSampler(LENGTHS, OFFSETS, width=2, steps_per_batch=bad)


def test_a_run_resumes_with_the_steps_a_batch_it_was_trained_with(tmp_path):
    # Lightning counts the optimizer steps of one step a batch and of several in different places: resuming in the
    # other mode would count from 0, so it is refused; in the same mode the run goes on from its steps.
    recipe = ["data.n_sessions=600", "data.n_items=100", "model.hidden=16", "model.embedding_dim=16",
              "data.batch_size=16", "~prior", "~blend", "refit=false"]  # fmt: skip
    first = compose_config("train", [*recipe, "trainer.max_epochs=1", "data.steps_per_batch=1"], tmp_path / "one")
    train(first)
    last = tmp_path / "one/checkpoints/last.ckpt"
    steps = torch.load(last, weights_only=False)["global_step"]
    resumed = [*recipe, "trainer.max_epochs=2", f"ckpt_path={last}"]
    with pytest.raises(ValueError, match=r"trained with one step a batch \(\d+ steps\) and now takes 4: resume it"):
        train(compose_config("train", [*resumed, "data.steps_per_batch=4"], tmp_path / "four"))
    train(compose_config("train", [*resumed, "data.steps_per_batch=1"], tmp_path / "again"))
    assert torch.load(tmp_path / "again/checkpoints/last.ckpt", weights_only=False)["global_step"] > steps
