"""Warm-up then decay: the factor at hand-computed steps, and a real run ending at the floor."""

import pytest
import torch

from conftest import TINY, compose_config
from lstm_rec.jobs.train import train
from lstm_rec.schedules import WarmupDecay


def test_warmup_then_cosine_or_linear_decay():
    cosine = WarmupDecay(total_steps=14, warmup_steps=4, decay="cosine", min_factor=0.1)
    # Warm-up 1/4 .. 4/4; then cosine over the 10 remaining steps: at step 9 (halfway) 0.1 + 0.9 * 0.5.
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == pytest.approx(1.0)
    assert cosine(9) == pytest.approx(0.55)
    assert cosine(14) == pytest.approx(0.1) and cosine(20) == pytest.approx(0.1)
    linear = WarmupDecay(total_steps=14, warmup_steps=0, decay="linear", min_factor=0.0)
    assert [linear(s) for s in (0, 7, 14)] == pytest.approx([1.0, 0.5, 0.0])
    assert WarmupDecay(10, 2, "none", 0.0)(9) == 1.0
    with pytest.raises(ValueError, match="decay must be one of"):
        WarmupDecay(10, 2, "exp", 0.0)


def test_hold_at_the_base_rate_before_the_decay():
    # 4 warm-up steps, then 10: the first half (5 steps) at the base rate, then a linear decay over the other 5.
    held = WarmupDecay(total_steps=14, warmup_steps=4, decay="linear", min_factor=0.0, hold_fraction=0.5)
    assert [held(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [held(s) for s in (4, 6, 9)] == [1.0, 1.0, 1.0]
    assert [held(s) for s in (10, 11, 14)] == pytest.approx([0.8, 0.6, 0.0])
    with pytest.raises(ValueError, match="hold_fraction must be in"):
        WarmupDecay(10, 2, "cosine", 0.0, hold_fraction=1.0)


def test_a_run_warms_up_and_decays_over_its_own_length(tmp_path):
    schedule = ["model/scheduler=warmup_cosine", "model.scheduler.warmup_steps=10", "model.scheduler.min_factor=0.1"]
    overrides = [*(o for o in TINY if o != "model.scheduler=null"), *schedule]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    steps = last["global_step"]
    assert last["lr_schedulers"][0]["last_epoch"] == steps  # stepped once per optimizer step
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.01)  # the floor at the end
    assert metrics["test/recall@20"] > 1.5 * metrics["pop/test/recall@20"]  # it still learns
