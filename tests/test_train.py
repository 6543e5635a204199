"""End to end through the real config: train(cfg), its outputs, evaluation of its checkpoint, resuming."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, TRAINED, compose_config, write_events
from lstm_rec.checkpoint import CheckpointError, load_network
from lstm_rec.data import FileDataModule, ItemIndex, Sessions
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluation import evaluate
from lstm_rec.jobs.compare import compare
from lstm_rec.jobs.train import train
from lstm_rec.module import SessionRecModule
from lstm_rec.prior import RecentPopularity


@pytest.fixture(scope="module")
def synthetic_run(trained_runs):
    return trained_runs["lstm"]


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
    assert json.loads((out / "environment.json").read_text())["packages"]["torch"] == torch.__version__
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
    second = train(compose_config("train", [*TINY, *TRAINED["lstm"]], tmp_path / "again"))
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
    results = compare(cfg)
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
    results = compare(compose_config("eval", overrides, tmp_path))
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


NEWEST_ONLY = 1000  # an item that only the newest training sessions (the held-out validation) and the test click


@pytest.fixture(scope="module")
def held_out_item_run(tmp_path_factory):
    """A run on files whose validation split (the newest 10 % of data.train) alone holds an item that the test clicks
    too: the network never learns it, so the test's predictions of it are misses."""
    data = tmp_path_factory.mktemp("held_out_item")
    events = generate_events(n_sessions=1500, n_items=100, seed=3)
    events.columns = ["SessionId", "ItemId", "Time"]
    older, test = events[events.SessionId < 1350], events[events.SessionId >= 1350]
    newest = older[older.SessionId >= 1340].groupby("SessionId").Time.max()  # inside the held-out tenth
    tails = pd.DataFrame({"SessionId": newest.index, "ItemId": NEWEST_ONLY, "Time": newest.to_numpy() + 1})
    # 30 test sessions start with the item, 30 others end with it.
    starts, ends = test.groupby("SessionId").Time.min(), test.groupby("SessionId").Time.max()
    fronts = pd.DataFrame({"SessionId": starts.index[:30], "ItemId": NEWEST_ONLY, "Time": starts.to_numpy()[:30] - 1})
    backs = pd.DataFrame({"SessionId": ends.index[30:60], "ItemId": NEWEST_ONLY, "Time": ends.to_numpy()[30:60] + 1})
    pd.concat([older, tails]).to_csv(data / "train.tsv", sep="\t", index=False)
    test = pd.concat([test, fronts, backs]).sort_values(["SessionId", "Time"])
    test.to_csv(data / "test.csv", index=False)
    return data, train(compose_config("train", file_overrides(data), data / "run"))


def test_test_clicks_on_items_only_the_held_out_validation_holds_are_kept_as_misses(held_out_item_run, tmp_path):
    data, trained = held_out_item_run
    test = pd.read_csv(data / "test.csv")
    every = int((test.groupby("SessionId").size() - 1).sum())  # every test prediction: all its items are training items
    assert trained["test/n_predictions"] == trained["pop/test/n_predictions"] == every
    # 30 of them predict the held-out item, which the network never recommends: misses.
    assert trained["test/recall@20"] * every <= every - 30 + 1e-6
    # evaluate.py with data.train ranks the same predictions (the item a blank input and a miss for the checkpoint)
    # to the same figures, and the baselines, fitted on all of data.train, rank them too.
    overrides = [f"ckpt_path={trained['checkpoint']}", *file_overrides(data)[-3:], "models=[pop,sr]"]
    results = compare(compose_config("eval", [o for o in overrides if not o.startswith("data.n_")], tmp_path))
    assert {r["test/n_predictions"] for r in results.values()} == {every}
    for key in ("test/recall@20", "test/mrr@20", "test/coverage@20", "test/popularity_bias@20"):
        assert results["lstm"][key] == pytest.approx(trained[key])
    assert results["pop"]["test/recall@20"] > 0


def test_several_checkpoints_in_one_comparison(file_run, tmp_path):
    data, out, trained = file_run
    paths = f"[{trained['checkpoint']},{out / 'checkpoints' / 'last.ckpt'}]"
    overrides = [f"ckpt_path={paths}", "data=files", f"data.test={data / 'test.csv'}"]
    results = compare(compose_config("eval", overrides, tmp_path))
    assert list(results) == ["lstm_1", "lstm_2"]
    assert results["lstm_1"]["test/mrr@20"] == pytest.approx(trained["test/mrr@20"])


def test_baselines_need_training_data(tmp_path):
    cfg = compose_config("eval", ["data=files", f"data.test={tmp_path / 't.csv'}", "models=[sr]"], tmp_path)
    write_events(tmp_path / "t.csv", [(1, 2, 3.0), (1, 3, 4.0)], sep=",")
    with pytest.raises(ValueError, match=r"data\.train is not set.*set data\.train=PATH"):
        compare(cfg)


def test_unknown_baseline_name(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        compare(compose_config("eval", ["models=[gru]", "data.n_sessions=300"], tmp_path))


def test_checkpoint_carries_the_item_index(file_run):
    data, _, trained = file_run
    model = load_network(trained["checkpoint"])
    train_items = sorted(set(int(line.split("\t")[1]) for line in (data / "train.tsv").read_text().splitlines()[1:]))
    assert model.item_index.ids.tolist() == train_items
    assert model.network.n_items == len(train_items)


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


def test_a_new_run_in_a_directory_with_checkpoints_is_refused(file_run):
    # Lightning would write epoch_NNN-v1.ckpt and last-v1.ckpt beside the earlier run's, and its last.ckpt would
    # pass for the new run's (what ckpt_path=last, serve and recommend pick up).
    data, out, _ = file_run
    before = {path.name: path.read_bytes() for path in (out / "checkpoints").glob("*.ckpt")}
    cfg = compose_config("train", file_overrides(data, "trainer.max_epochs=1"), out)
    with pytest.raises(
        FileExistsError,
        match=r"checkpoints already holds the checkpoints of an earlier run.*last\.ckpt"
        r".*ckpt_path=last.*hydra\.run\.dir=DIR",
    ):
        train(cfg)
    assert {path.name: path.read_bytes() for path in (out / "checkpoints").glob("*.ckpt")} == before


def test_without_a_checkpoint_callback_an_earlier_runs_checkpoints_are_found_too(train_config):
    # Without callbacks.model_checkpoint, Lightning's own checkpointing saves under the logger's directory
    # (<run>/tensorboard/checkpoints/epoch=N-step=M.ckpt); a second new run there would add beside them.
    cfg = train_config("callbacks.model_checkpoint=null", "trainer.max_epochs=1")
    first = train(cfg)
    saved = sorted(Path(cfg.paths.output_dir).rglob("*.ckpt"))
    assert [path.parent.relative_to(cfg.paths.output_dir).as_posix() for path in saved] == ["tensorboard/checkpoints"]
    assert first["checkpoint"] == str(saved[0])
    with pytest.raises(FileExistsError, match=r"earlier run \(tensorboard/checkpoints/epoch=0-step=\d+\.ckpt\)"):
        train(train_config("callbacks.model_checkpoint=null", "trainer.max_epochs=1"))
    assert sorted(Path(cfg.paths.output_dir).rglob("*.ckpt")) == saved


def test_a_run_that_saves_no_checkpoint_says_so_with_null(train_config):
    cfg = train_config("callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert metrics["checkpoint"] is None
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["checkpoint"] is None
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))


def test_a_top_up_without_a_checkpoint_is_skipped_with_a_warning_and_the_runs_model_tested(train_config, caplog):
    cfg = train_config(
        "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false", "trainer.max_epochs=1", "refit=top_up"
    )
    with caplog.at_level(logging.WARNING, logger="lstm_rec.jobs.train"):
        metrics = train(cfg)
    assert "top up: skipped, the run saved no checkpoint to continue" in caplog.text
    assert 0.0 <= metrics["test/recall@20"] <= 1.0  # the run's own network was tested, not replaced
    assert "top_up_epochs" not in metrics and "selected/test/recall@20" not in metrics
    assert not (Path(cfg.paths.output_dir) / "top_up").exists()


def test_recent_popularity_prior_from_the_last_hours_of_training(file_run, tmp_path):
    data, _, _ = file_run
    overrides = file_overrides(
        data,
        f"data.valid={data / 'test.csv'}",  # all of train.tsv trains
        "trainer.max_epochs=1",
        "prior=recent_popularity",
        "prior.weight=0.5",
        "prior.hours=2",
    )
    trained = train(compose_config("train", overrides, tmp_path / "prior"))
    model = load_network(trained["checkpoint"])
    events = pd.read_csv(data / "train.tsv", sep="\t")
    starts = events.groupby("SessionId")["Time"].transform("min")
    recent = events[starts >= events["Time"].max() - 2 * 3600]
    counts = recent["ItemId"].value_counts().reindex(model.item_index.ids, fill_value=0).to_numpy()
    assert 0 < (counts > 0).sum() < len(counts)  # the window holds some items, not all
    torch.testing.assert_close(model.prior.scores, torch.tensor(0.5 * np.log1p(counts), dtype=torch.float32))
    assert (model.prior.weight, model.prior.hours) == (0.5, 2.0)
    # The test metrics come from the scores with the prior; the network alone scores differently.
    datamodule = FileDataModule(test=str(data / "test.csv"))
    datamodule.item_index = model.item_index
    datamodule.setup("test")
    test = datamodule.full_dataloader("test")
    assert evaluate(model.scorer(), test, [20], "test/")["test/recall@20"] == pytest.approx(trained["test/recall@20"])
    assert evaluate(model.network, test, [20], "test/")["test/recall@20"] != trained["test/recall@20"]


def version_1(checkpoint: dict) -> dict:
    """A checkpoint as lstm_rec 0.1 wrote it: module hyperparameters, one network's or each member's own weights
    (`net.members.<m>.`), the prior as a buffer of the network."""
    entry = checkpoint["lstm_rec"]
    network, prior = entry["network"], entry["prior"]
    members = network.get("members") or [None]
    state = {}
    for m, member in enumerate(members):
        prefix = "net." if member is None else f"net.members.{m}."
        window = (member or {}).get("repeat_window", network.get("repeat_window", 0))
        for name, value in checkpoint["state_dict"].items():
            name = name.removeprefix("net.")
            if name.startswith("lstms."):
                if name.startswith(f"lstms.{m}."):
                    state[prefix + "lstm." + name.split(".", 2)[2]] = value
            elif name.startswith("repeat_scores."):
                if window:
                    state[prefix + name] = value[m, :window]
            else:
                state[prefix + (name + ".weight" if name == "item_embedding" else name)] = value[m]
    state["net.item_prior"] = torch.zeros(len(entry["item_counts"])) if prior is None else prior["scores"]
    hparams = dict(network) | {"recent_weight": 0.0 if prior is None else prior["weight"], "recent_hours": 24.0}
    old_entry = {"format_version": 1, "item_ids": entry["item_ids"], "item_counts": entry["item_counts"]}
    return {"state_dict": state, "hyper_parameters": hparams, "lstm_rec": old_entry}


def test_version_1_checkpoints_load_and_score_as_before(trained_runs, tmp_path):
    for name in ("lstm", "ensemble"):
        path = trained_runs[name][1]["checkpoint"]
        torch.save(version_1(torch.load(path, weights_only=True)), tmp_path / "old.ckpt")
        old, new = load_network(tmp_path / "old.ckpt"), load_network(path)
        items = torch.randint(1, new.network.n_items + 1, (3, 6))
        torch.testing.assert_close(
            old.scorer().score(old.network.encode(items)), new.scorer().score(new.network.encode(items))
        )
    with pytest.raises(CheckpointError, match="format version 1"):
        SessionRecModule(old.item_index, hidden=old.network.hidden_size).on_load_checkpoint(
            torch.load(tmp_path / "old.ckpt")
        )


def test_foreign_and_broken_checkpoints_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an lstm_rec checkpoint"):
        load_network(tmp_path / "foreign.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_network(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path: no checkpoint"):
        load_network(tmp_path / "missing.ckpt")
    torch.save({"lstm_rec": {"format_version": 9, "item_ids": [1]}}, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="has checkpoint format version 9; this lstm_rec reads versions 1 and 2"):
        load_network(tmp_path / "future.ckpt")


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


def test_recent_prior_without_click_times_fails_clearly():
    untimed = Sessions(items=np.array([1, 2, 3]), offsets=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"prior=recent_popularity\) needs the training sessions' click times"):
        RecentPopularity(0.1, 8).fit(untimed, 3)


def test_the_monitored_metric_must_be_logged(tmp_path):
    with pytest.raises(ValueError, match=r"monitor='val/mrr@50' is not logged: its cutoff must be one of model.ks"):
        train(compose_config("train", [*TINY, "monitor=val/mrr@50"], tmp_path))


def bf16_lstm_runs_here() -> bool:
    lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 4))
    except RuntimeError:  # oneDNN has no bf16 LSTM for CPUs without AVX-512 (e.g. AMD EPYC before Zen 4)
        return False
    return True


@pytest.mark.skipif(not bf16_lstm_runs_here(), reason="this CPU runs no bf16 LSTM (tests/test_gpu.py covers bf16)")
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
