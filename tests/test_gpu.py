"""GPU training and evaluation (skipped without CUDA): bf16-mixed trains well; GPU and CPU evaluation agree."""

import pytest
import torch

from conftest import TINY, compose_config
from lstm_rec.evaluate import evaluate_checkpoint
from lstm_rec.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gpu_training_beats_popularity(precision, tmp_path):
    overrides = [*TINY, "trainer.accelerator=gpu", f"trainer.precision={precision}"]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/n_predictions"] == metrics["pop/test/n_predictions"]

    # The same checkpoint through the evaluation job, on the GPU and on the CPU, beside the baselines.
    data = [o for o in TINY if o.startswith("data.n_")]
    results = {}
    for device in ("cuda", "cpu"):
        overrides = [f"ckpt_path={metrics['checkpoint']}", *data, f"device={device}", "models=[pop,sr,vsknn]"]
        results[device] = evaluate_checkpoint(compose_config("eval", overrides, tmp_path / device))
    for device in ("cuda", "cpu"):
        lstm = results[device]["lstm"]
        assert lstm["test/n_predictions"] == metrics["test/n_predictions"]
        assert lstm["test/recall@20"] == pytest.approx(metrics["test/recall@20"], abs=2e-3)
        assert lstm["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"], abs=2e-3)
    # baselines always score on the CPU: identical whatever the LSTM's device
    assert results["cuda"]["vsknn"]["test/mrr@20"] == results["cpu"]["vsknn"]["test/mrr@20"]


def test_recommender_on_the_gpu_matches_the_cpu(tmp_path):
    from lstm_rec import Recommender

    checkpoint = train(compose_config("train", TINY, tmp_path / "run"))["checkpoint"]
    on_gpu, on_cpu = Recommender.from_checkpoint(checkpoint, "cuda"), Recommender.from_checkpoint(checkpoint, "cpu")
    ids = on_cpu.item_index.ids.tolist()
    sessions = [ids[i : i + 4] for i in range(0, 40, 4)]
    for gpu, cpu in zip(on_gpu.recommend_batch(sessions, k=10), on_cpu.recommend_batch(sessions, k=10), strict=True):
        assert [i for i, _ in gpu] == [i for i, _ in cpu]
    state = on_gpu.start()
    for item in sessions[0]:
        state, live = on_gpu.step(state, item, k=10)
    assert [i for i, _ in live] == [i for i, _ in on_cpu.recommend(sessions[0], k=10)]
