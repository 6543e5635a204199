"""GPU training (skipped without CUDA): bf16-mixed trains well, and evaluation on the GPU matches the CPU."""

import pytest
import torch

from conftest import TINY, compose_config
from lstm_rec.checkpoint import load_module
from lstm_rec.data import SyntheticDataModule
from lstm_rec.evaluation import evaluate
from lstm_rec.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gpu_training_beats_popularity(precision, tmp_path):
    overrides = [*TINY, "trainer.accelerator=gpu", f"trainer.precision={precision}"]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/n_predictions"] == metrics["pop/test/n_predictions"]

    # The same checkpoint evaluated on the CPU by the shared evaluation path gives the same metrics.
    model = load_module(metrics["checkpoint"])
    datamodule = SyntheticDataModule(n_sessions=3000, n_items=200, seed=42)
    datamodule.setup("fit")
    on_cpu = evaluate(model.net, datamodule.test_dataloader(), [20], "test/")
    assert on_cpu["test/n_predictions"] == metrics["test/n_predictions"]
    assert on_cpu["test/recall@20"] == pytest.approx(metrics["test/recall@20"], abs=2e-3)
    assert on_cpu["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"], abs=2e-3)
