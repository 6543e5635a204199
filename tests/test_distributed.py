"""Several training processes: each gets its own share of the batches, and the metrics cover every session once."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_script
from lstm_rec.checkpoint import load_network
from lstm_rec.data.batching import LengthGroupedBatchSampler, split_to_multiple
from lstm_rec.evaluation import evaluate


def shares(lengths, batch_size, shuffle, replicas, epoch=0):
    samplers = [
        LengthGroupedBatchSampler(lengths, batch_size, shuffle, seed=7, num_replicas=replicas, rank=rank)
        for rank in range(replicas)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return samplers, [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(
    ("n_windows", "batch_size", "replicas"), [(1000, 64, 2), (1001, 64, 3), (130, 64, 4), (5, 2, 4)]
)
def test_processes_share_every_window_exactly_once(shuffle, n_windows, batch_size, replicas):
    lengths = np.random.default_rng(0).integers(2, 40, n_windows)
    samplers, batches = shares(lengths, batch_size, shuffle, replicas)
    taken = np.concatenate([b for rank in batches for b in rank])
    np.testing.assert_array_equal(np.sort(taken), np.arange(n_windows))  # none dropped, none repeated
    # Every process runs the same number of steps, as DDP's gradient all-reduce requires, and says so in len().
    assert {len(rank) for rank in batches} == {len(samplers[0])}
    # Evaluation's position budget may leave too few windows to split, then neighbours merge (5 windows, 4 ranks).
    assert all(len(b) <= batch_size for rank in batches for b in rank) or n_windows < 2 * replicas


def test_shares_change_with_the_epoch_and_agree_across_processes():
    lengths = np.random.default_rng(1).integers(2, 30, 500)
    _, first = shares(lengths, 32, True, 2, epoch=0)
    _, again = shares(lengths, 32, True, 2, epoch=0)
    _, second = shares(lengths, 32, True, 2, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first[0], second[0], strict=True))


def test_split_to_multiple_splits_the_largest_batches_in_place():
    batches = [np.arange(0, 4), np.arange(4, 5), np.arange(5, 8)]
    split = split_to_multiple(batches, 4)
    assert [b.tolist() for b in split] == [[0, 1], [2, 3], [4], [5, 6, 7]]
    # Too few windows for the next multiple (5 windows, 4 processes): the smallest neighbours are merged instead.
    merged = split_to_multiple([np.arange(i, i + 1) for i in range(5)], 4)
    assert [b.tolist() for b in merged] == [[0, 1], [2], [3], [4]]
    with pytest.raises(ValueError, match="cannot cut 1 windows into a multiple of 2 batches"):
        split_to_multiple([np.arange(1)], 2)


def test_more_processes_than_sessions_is_refused():
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        LengthGroupedBatchSampler(np.array([3, 4]), 8, True, num_replicas=4, rank=0)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_tests_every_prediction_once(tmp_path):
    run_dir = tmp_path / "ddp"
    run_script(
        "scripts/train.py", *TINY, "trainer=ddp", "trainer.devices=2", "num_threads=1", f"hydra.run.dir={run_dir}"
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # A single process evaluating the tested checkpoint on all of the test set gets the same numbers.
    data = instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").data)
    model = load_network(metrics["checkpoint"])
    data.item_index = model.item_index
    data.setup("test")
    torch.set_num_threads(2)
    alone = evaluate(model.scorer(), data.full_dataloader("test"), [5, 20], "test/")
    assert metrics["test/n_predictions"] == alone["test/n_predictions"] == data.test_sessions.n_targets
    for name in ("recall@5", "mrr@5", "recall@20", "mrr@20", "ndcg@20"):
        assert metrics[f"test/{name}"] == pytest.approx(alone[f"test/{name}"], abs=1e-6)
    assert metrics["test/recall@20"] > 1.5 * metrics["pop/test/recall@20"]  # it learned
    # The per-epoch val/loss is the mean per prediction over both processes' shares: at the tested epoch, the value
    # one process computes on all validation sessions for metrics.json.
    tested_epoch = int(Path(metrics["checkpoint"]).stem.split("_")[1])
    logged = [e.value for e in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("val/loss")]
    assert logged[tested_epoch] == pytest.approx(metrics["val/loss"], rel=1e-6)
