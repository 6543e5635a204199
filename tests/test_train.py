"""End to end through the real config: train(cfg), its outputs, evaluation of its checkpoint, resuming."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, compose_config, write_events
from lstm_rec.checkpoint import CheckpointError, load_module
from lstm_rec.data import FileDataModule, ItemIndex, Sessions
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluate import evaluate_checkpoint
from lstm_rec.evaluation import evaluate
from lstm_rec.module import SessionRecModule
from lstm_rec.train import train


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "run"
    metrics = train(compose_config("train", TINY, out))
    return out, metrics


def test_lstm_beats_popularity_by_far(synthetic_run):
    _, metrics = synthetic_run
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]
    assert metrics["test/mrr@20"] > 2 * metrics["pop/test/mrr@20"]
    assert metrics["val/recall@20"] > 2 * metrics["pop/val/recall@20"]
    # Same data, same protocol: the LSTM and popularity rank exactly the same predictions.
    assert metrics["test/n_predictions"] == metrics["pop/test/n_predictions"] > 0


def test_run_writes_checkpoints_metrics_and_tensorboard(synthetic_run):
    out, metrics = synthetic_run
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert metrics["checkpoint"].startswith(str(out / "checkpoints" / "epoch_"))
    saved = json.loads((out / "metrics.json").read_text())
    for k in (5, 10, 20):
        for name in ("recall", "mrr", "ndcg"):
            assert saved[f"test/{name}@{k}"] == pytest.approx(metrics[f"test/{name}@{k}"])
            assert f"val/{name}@{k}" in saved
            assert f"pop/test/{name}@{k}" in saved
    events = EventAccumulator(str(out / "tensorboard")).Reload()  # all event files of the run
    tags = events.Tags()["scalars"]
    assert {"train/loss_step", "val/mrr@20", "val/recall@5", "lr-Adam", "final/test/mrr@20"} <= set(tags)
    assert len(events.Scalars("val/mrr@20")) == metrics["epochs"]  # one point per epoch
    # HPARAMS tab: the hyperparameters with the final metrics as its metric columns.
    content = b"".join(events.PluginTagToContent("hparams").values())
    assert b"model/hidden" in content and b"final/test/mrr@20" in content


def test_best_checkpoint_is_the_best_validation_epoch(synthetic_run):
    out, metrics = synthetic_run
    curve = [e.value for e in EventAccumulator(str(out / "tensorboard")).Reload().Scalars("val/mrr@20")]
    assert metrics["val/mrr@20"] == pytest.approx(max(curve), abs=1e-6)


def test_same_seed_same_metrics(synthetic_run, tmp_path):
    _, first = synthetic_run
    second = train(compose_config("train", TINY, tmp_path / "again"))
    for key in ("test/recall@20", "test/mrr@20", "val/mrr@20", "pop/test/recall@20"):
        assert second[key] == first[key]


def file_overrides(data: Path, *extra: str) -> list[str]:
    """TINY on the TSV files of `file_run`, then `extra`; TINY's keys that `extra` sets again are left out."""
    replaced = tuple(o.split("=")[0] + "=" for o in extra)
    tiny = [o for o in TINY if not o.startswith(("data.", *replaced))]
    return [*tiny, "data=files", f"data.train={data / 'train.tsv'}", f"data.test={data / 'test.csv'}", *extra]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """Train on TSV files, the way users run their own data."""
    data = tmp_path_factory.mktemp("files")
    events = generate_events(n_sessions=2500, n_items=150, seed=7)
    events.columns = ["SessionId", "ItemId", "Time"]
    cut = int(events["SessionId"].quantile(0.9))
    events[events["SessionId"] <= cut].to_csv(data / "train.tsv", sep="\t", index=False)
    test = events[events["SessionId"] > cut]
    test.to_csv(data / "test.csv", index=False)
    out = data / "run"
    overrides = file_overrides(data)
    return data, out, train(compose_config("train", overrides, out))


def test_evaluate_a_checkpoint_without_training_data(file_run, tmp_path):
    data, _, trained = file_run
    cfg = compose_config(
        "eval", [f"ckpt_path={trained['checkpoint']}", "data=files", f"data.test={data / 'test.csv'}"], tmp_path
    )
    assert cfg.data.train is None
    results = evaluate_checkpoint(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/recall@20", "test/mrr@20", "test/n_predictions", "pop/test/recall@20"):
        assert saved[key] == pytest.approx(trained[key])
    assert results["lstm"]["test/mrr@20"] == pytest.approx(trained["test/mrr@20"])
    assert results["lstm"]["fit_seconds"] > 0  # the training time travels in the checkpoint


def test_compare_checkpoint_and_baselines_on_the_same_predictions(file_run, tmp_path):
    data, _, trained = file_run
    overrides = [
        f"ckpt_path={trained['checkpoint']}",
        "data=files",
        f"data.train={data / 'train.tsv'}",
        f"data.test={data / 'test.csv'}",
        "models=[pop,markov,sr,sknn,vsknn]",
        "breakdown=[position]",
    ]
    results = evaluate_checkpoint(compose_config("eval", overrides, tmp_path))
    assert list(results) == ["lstm", "pop", "markov", "sr", "sknn", "vsknn"]
    assert len({r["test/n_predictions"] for r in results.values()}) == 1
    assert results["lstm"]["test/n_predictions"] == trained["test/n_predictions"]
    # the planted structure is first-order: Markov and the LSTM both beat popularity by far
    assert results["markov"]["test/recall@20"] > 1.5 * results["pop"]["test/recall@20"]
    assert results["lstm"]["test/recall@20"] > 1.5 * results["pop"]["test/recall@20"]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["sr"]["test/mrr@20"] == pytest.approx(results["sr"]["test/mrr@20"])
    assert {"fit_seconds", "predict_seconds", "test/coverage@20", "test/popularity_bias@20"} <= set(saved["vsknn"])
    assert (tmp_path / "comparison.md").read_text().count("\n") == 2 + len(results)
    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "breakdown_position.md").is_file()


def test_several_checkpoints_in_one_comparison(file_run, tmp_path):
    data, out, trained = file_run
    paths = f"[{trained['checkpoint']},{out / 'checkpoints' / 'last.ckpt'}]"
    overrides = [f"ckpt_path={paths}", "data=files", f"data.test={data / 'test.csv'}"]
    results = evaluate_checkpoint(compose_config("eval", overrides, tmp_path))
    assert list(results) == ["lstm_1", "lstm_2"]
    assert results["lstm_1"]["test/mrr@20"] == pytest.approx(trained["test/mrr@20"])


def test_baselines_need_training_data(tmp_path):
    cfg = compose_config("eval", ["data=files", f"data.test={tmp_path / 't.csv'}", "models=[sr]"], tmp_path)
    write_events(tmp_path / "t.csv", [(1, 2, 3.0), (1, 3, 4.0)], sep=",")
    with pytest.raises(ValueError, match=r"data\.train is not set.*set data\.train=PATH"):
        evaluate_checkpoint(cfg)


def test_unknown_baseline_name(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        evaluate_checkpoint(compose_config("eval", ["models=[gru]", "data.n_sessions=300"], tmp_path))


def test_checkpoint_carries_the_item_index(file_run):
    data, _, trained = file_run
    module = load_module(trained["checkpoint"])
    train_items = sorted(set(int(line.split("\t")[1]) for line in (data / "train.tsv").read_text().splitlines()[1:]))
    assert module.item_index.ids.tolist() == train_items
    assert module.net.n_items == len(train_items)


def test_resume_from_a_checkpoint(file_run, tmp_path):
    data, out, trained = file_run
    overrides = file_overrides(
        data,
        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
        f"trainer.max_epochs={trained['epochs'] + 1}",
        "callbacks.early_stopping=null",
    )
    resumed = train(compose_config("train", overrides, tmp_path / "resumed"))
    assert resumed["epochs"] == trained["epochs"] + 1


def test_recent_popularity_prior_from_the_last_hours_of_training(file_run, tmp_path):
    data, _, _ = file_run
    overrides = file_overrides(
        data,
        f"data.valid={data / 'test.csv'}",  # all of train.tsv trains
        "trainer.max_epochs=1",
        "model.recent_weight=0.5",
        "model.recent_hours=2",
    )
    trained = train(compose_config("train", overrides, tmp_path / "prior"))
    module = load_module(trained["checkpoint"])
    events = pd.read_csv(data / "train.tsv", sep="\t")
    starts = events.groupby("SessionId")["Time"].transform("min")
    recent = events[starts >= events["Time"].max() - 2 * 3600]
    counts = recent["ItemId"].value_counts().reindex(module.item_index.ids, fill_value=0).to_numpy()
    assert 0 < (counts > 0).sum() < len(counts)  # the window holds some items, not all
    expected = torch.tensor(0.5 * np.log1p(counts), dtype=torch.float32)
    torch.testing.assert_close(module.net.item_prior, expected)
    # Its recommendations score with it: the test metrics come from the scores that include it.
    module.net.item_prior.zero_()
    datamodule = FileDataModule(test=str(data / "test.csv"))
    datamodule.item_index = module.item_index
    datamodule.setup("test")
    without = evaluate(module.net, datamodule.full_dataloader("test"), [20], "test/")
    assert without["test/recall@20"] != trained["test/recall@20"]


def test_checkpoints_from_before_the_item_prior_still_load(file_run, tmp_path):
    _, _, trained = file_run
    checkpoint = torch.load(trained["checkpoint"], weights_only=False)
    for name in [name for name in checkpoint["state_dict"] if name.endswith("item_prior")]:
        del checkpoint["state_dict"][name]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    module = load_module(tmp_path / "old.ckpt")
    assert module.net.item_prior.eq(0).all()


def test_foreign_and_broken_checkpoints_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an lstm_rec checkpoint"):
        load_module(tmp_path / "foreign.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_module(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path: no checkpoint"):
        load_module(tmp_path / "missing.ckpt")


def test_bad_training_file_fails_with_a_clear_message(tmp_path):
    path = write_events(tmp_path / "train.csv", [(1, 2, 3.0)], columns=("session", "item", "time"), sep=",")
    cfg = compose_config("train", ["data=files", f"data.train={path}", f"data.test={path}"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"data\.train: .* has no column \['SessionId', 'ItemId', 'Time'\]"):
        train(cfg)


def test_missing_file(tmp_path):
    overrides = ["data=files", f"data.train={tmp_path / 'nope.csv'}", f"data.test={tmp_path / 't.csv'}"]
    cfg = compose_config("train", overrides, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"data\.train: no file"):
        train(cfg)


def test_tiny_overrides_are_known_keys():
    assert all(Path(__file__).parent.joinpath("conftest.py").read_text().count(o) for o in TINY)


def test_recent_prior_without_click_times_fails_clearly():
    module = SessionRecModule(ItemIndex(ids=np.arange(3), counts=np.ones(3, dtype=np.int64)), recent_weight=0.1)
    untimed = Sessions(items=np.array([1, 2, 3]), offsets=np.array([0, 3]))
    for datamodule in (None, SimpleNamespace(train_sessions=untimed)):
        module._trainer = SimpleNamespace(datamodule=datamodule)
        with pytest.raises(ValueError, match=r"model.recent_weight > 0 .* needs the training sessions"):
            module.setup("fit")


def test_bf16_training_with_the_fused_adagrad_clips_and_learns(tmp_path):
    # Lightning's mixed-precision plugin refuses to clip for any fused optimizer; under bf16 (no loss
    # scaler) the module clips itself. The presets' fused Adagrad with clipping must train under bf16.
    overrides = [*TINY, "model/optimizer=adagrad", "model.optimizer.lr=0.1", "trainer.precision=bf16-mixed"]
    metrics = train(compose_config("train", [*overrides, "trainer.gradient_clip_val=1.0"], tmp_path))
    assert metrics["test/recall@20"] > 2 * metrics["pop/test/recall@20"]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_the_module_clips_a_fused_optimizers_gradients_under_bf16(algorithm):
    module = SessionRecModule(ItemIndex(ids=np.arange(1, 11), counts=np.ones(10, dtype=np.int64)), hidden=4)
    optimizer = torch.optim.Adagrad(module.parameters(), lr=0.1, fused=True)
    for parameter in module.parameters():
        parameter.grad = torch.full_like(parameter, 3.0)
    module.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(precision="bf16-mixed", scaler=None))
    module.configure_gradient_clipping(optimizer, 0.5, algorithm)
    grads = [p.grad for p in module.parameters()]
    if algorithm == "norm":
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(0.5, rel=1e-4)
    else:
        assert all(g.eq(0.5).all() for g in grads)
