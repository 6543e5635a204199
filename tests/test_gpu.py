"""GPU training and evaluation (skipped without CUDA): bf16-mixed trains well; GPU and CPU evaluation agree;
the training step never waits for the device; the kNN blend scores alike on both; several session-parallel steps a
batch train as one step a batch does."""

import lightning as L
import numpy as np
import pytest
import torch

from conftest import TINY, compose_config
from lstm_rec.data import ItemIndex, SyntheticDataModule
from lstm_rec.jobs.compare import compare
from lstm_rec.jobs.train import train
from lstm_rec.losses import BPRMax, CrossEntropy, SampledSoftmax
from lstm_rec.module import SessionRecModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    ("precision", "optimizer"), [("32-true", "adam"), ("bf16-mixed", "adam"), ("bf16-mixed", "adagrad")]
)
def test_gpu_training_beats_popularity(precision, optimizer, tmp_path):
    # adagrad: the presets' fused Adagrad with gradient clipping, which Lightning alone refuses under bf16
    overrides = [*TINY, "trainer.accelerator=gpu", f"trainer.precision={precision}", f"model/optimizer={optimizer}"]
    overrides += ["model.optimizer.lr=0.1"] if optimizer == "adagrad" else []
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/n_predictions"] == metrics["pop/test/n_predictions"]

    # The same checkpoint through the evaluation job, on the GPU and on the CPU, beside the baselines.
    data = [o for o in TINY if o.startswith("data.n_")]
    results = {}
    for device in ("cuda", "cpu"):
        overrides = [f"ckpt_path={metrics['checkpoint']}", *data, f"device={device}", "models=[pop,sr,vsknn]"]
        results[device] = compare(compose_config("eval", overrides, tmp_path / device))
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


def test_the_knn_blend_on_the_gpu_matches_the_cpu(tmp_path):
    # A fixed blend, so that the GPU run has one: its terms are computed on the CPU and added on the device.
    from lstm_rec import Recommender

    overrides = [*TINY, "trainer.accelerator=gpu", "blend=vsknn", "blend.weight=0.2"]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["blend_weight"] == 0.2
    on_gpu, on_cpu = (Recommender.from_checkpoint(metrics["checkpoint"], device) for device in ("cuda", "cpu"))
    assert on_gpu.scorer.scorer.blend is not None  # PriorScorer(BlendScorer(...))
    ids = on_cpu.item_index.ids.tolist()
    sessions = [ids[i : i + 4] for i in range(0, 40, 4)]
    for gpu, cpu in zip(on_gpu.recommend_batch(sessions, k=10), on_cpu.recommend_batch(sessions, k=10), strict=True):
        assert [i for i, _ in gpu] == [i for i, _ in cpu]
    state = on_gpu.start()
    for item in sessions[0]:
        state, live = on_gpu.step(state, item, k=10)
    assert [i for i, _ in live] == [i for i, _ in on_cpu.recommend(sessions[0], k=10)]
    # The checkpoint evaluated on the CPU scores what the GPU run tested.
    data = [o for o in TINY if o.startswith("data.n_")]
    cpu = compare(compose_config("eval", [f"ckpt_path={metrics['checkpoint']}", *data, "device=cpu"], tmp_path / "cpu"))
    assert cpu["lstm"]["test/recall@20"] == pytest.approx(metrics["test/recall@20"], abs=2e-3)
    assert cpu["lstm"]["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"], abs=2e-3)


@pytest.mark.parametrize("loss", ["cross_entropy", "sampled_softmax", "bpr_max"])
@pytest.mark.parametrize("members", [None, [{}, {"repeat_window": 3}]])
def test_a_training_step_never_makes_the_host_wait_for_the_gpu(loss, members):
    # The step, its backward pass, clipping and the fused update under CUDA's sync check: any operation that
    # waits for the device (.item(), boolean indexing, torch.unique...) raises.
    torch.manual_seed(0)
    index = ItemIndex(ids=np.arange(1, 501), counts=np.arange(1, 501))
    losses = {"cross_entropy": CrossEntropy, "sampled_softmax": SampledSoftmax, "bpr_max": BPRMax}
    objective = losses[loss]() if loss == "cross_entropy" else losses[loss](n_negatives=64)
    module = SessionRecModule(index, loss=objective, members=members, embedding_dim=16, hidden=32, dropout=0.3).cuda()
    module.on_fit_start()  # the sampled losses take the padded layout on the GPU
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    optimizer = torch.optim.Adagrad(module.parameters(), lr=0.1, fused=True)
    batch = torch.randint(1, 501, (64, 12))
    batch[32:, 6:] = 0
    batch = batch.cuda()
    losses = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                value = module.training_step(batch, step)
            optimizer.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            losses.append(value.detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v) for v in losses)


def test_batches_for_a_gpu_trainer_are_pinned():
    # Pinned host memory lets the batch's copy to the GPU run without making the host wait.
    datamodule = SyntheticDataModule(n_sessions=500, n_items=50, batch_size=16)
    datamodule.setup("fit")
    assert not next(iter(datamodule.train_dataloader())).is_pinned()  # no trainer: nothing to pin for
    datamodule.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
    assert next(iter(datamodule.train_dataloader())).is_pinned()
    assert next(iter(datamodule.val_dataloader())).is_pinned()


def test_several_steps_a_batch_train_on_the_gpu_as_one_step_a_batch(tmp_path):
    # The defaults' recipe on session-parallel steps on the GPU: 7 steps a batch under manual optimization against
    # one step a batch under Lightning's. CUDA's scatter-adds sum in any order, so the weights agree to rounding.
    recipe = ["data.n_sessions=1500", "data.n_items=200", "model.hidden=32", "model.embedding_dim=32",
              "data.batch_size=16", "trainer.max_epochs=2", "~prior", "~blend", "refit=false",
              "trainer.accelerator=gpu"]  # fmt: skip
    metrics = {}
    for k in (1, 7):
        metrics[k] = train(compose_config("train", [*recipe, f"data.steps_per_batch={k}"], tmp_path / f"k{k}"))
    one, several = (torch.load(tmp_path / f"k{k}/checkpoints/last.ckpt", weights_only=False) for k in (1, 7))
    assert one["global_step"] == several["global_step"] > 100
    for name, weights in one["state_dict"].items():
        torch.testing.assert_close(weights, several["state_dict"][name], rtol=1e-3, atol=1e-3, msg=name)
    assert metrics[7]["test/recall@20"] == pytest.approx(metrics[1]["test/recall@20"], abs=0.01)
    assert metrics[7]["test/recall@20"] > 2 * metrics[7]["pop/test/recall@20"]
