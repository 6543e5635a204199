"""init_from=CKPT: a checkpoint's weights continued on new data with a grown item index (lstm_rec.jobs.init_from)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from conftest import TINY, compose_config
from lstm_rec.checkpoint import load_network, read_checkpoint
from lstm_rec.data import ItemIndex
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluation import rank_batch
from lstm_rec.jobs.fresh import CatalogScorer
from lstm_rec.jobs.init_from import carry_optimizer_state, model_from_checkpoint
from lstm_rec.jobs.runs import build_model, prepare_run
from lstm_rec.jobs.train import train

# Day 1 knows items 1..160; day 2 clicks items 21..200: 40 new items, 20 vanished.
OLD_ITEMS, NEW_ITEMS, VANISHED = range(1, 161), range(161, 201), range(1, 21)
NETWORKS = {
    "untied": ["model.tie_weights=false"],
    "tied ensemble": ["model.tie_weights=true", "model.members=[{},{repeat_window:3,dropout:0.1}]"],
}


def test_grown_index_keeps_positions_appends_new_ids_in_the_index_type():
    base = ItemIndex(ids=np.array([30, 10, 20]), counts=np.array([5, 5, 5]))
    grown = base.grown(pd.Series([20, 40, 20, 5]))
    assert grown.ids.tolist() == [30, 10, 20, 5, 40] and grown.ids.dtype == base.ids.dtype
    assert grown.counts.tolist() == [0, 0, 2, 1, 1]  # this data's clicks; 30 and 10 kept with none
    text = ItemIndex(ids=np.array(["b", "a"], dtype=object), counts=np.array([1, 1]))
    assert text.grown(np.array(["a", "7"], dtype=object)).ids.tolist() == ["b", "a", "7"]
    assert base.grown(np.array(["20", "7"], dtype=object)).ids.tolist() == [30, 10, 20, 7]  # decimal text
    with pytest.raises(ValueError, match="cannot join an item index of integer ids"):
        base.grown(np.array(["20", "abc"], dtype=object))
    with pytest.raises(ValueError, match="cannot join an item index of integer ids"):  # not truncated into id 7
        base.grown(np.array([20.0, 7.5]))


def _write(events: pd.DataFrame, path: Path) -> Path:
    events.rename(columns={"session": "SessionId", "item": "ItemId", "time": "Time"}).to_csv(
        path, sep="\t", index=False
    )
    return path


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> dict[str, Path]:
    """Two days of a synthetic shop whose catalog changes: day 1 on OLD_ITEMS, day 2 without VANISHED and with
    NEW_ITEMS (its last 500 sessions held out)."""
    folder = tmp_path_factory.mktemp("days")
    events = generate_events(n_sessions=4000, n_items=200, seed=3)
    day1 = events[(events.session < 2000) & events["item"].isin(OLD_ITEMS)]
    day2 = events[(events.session >= 2000) & ~events["item"].isin(VANISHED)]
    return {
        "day1": _write(day1[day1.session < 1700], folder / "day1.tsv"),
        "day1_test": _write(day1[day1.session >= 1700], folder / "day1_test.tsv"),
        "day2": _write(day2[day2.session < 3500], folder / "day2.tsv"),
        "day2_test": _write(day2[day2.session >= 3500], folder / "day2_test.tsv"),
    }


# TINY's recipe learns these small days in 3 epochs, whatever the model group's defaults.


def overrides(train: Path, test: Path, *extra: str) -> list[str]:
    tiny = [o for o in TINY if not o.startswith(("data.", "model.tie_weights"))]
    data = ["data=files", f"data.train={train}", f"data.test={test}", "data.batch_size=64", "data.batching=windows"]
    return [*tiny, "num_threads=1", *data, *extra]


@pytest.fixture(scope="module", params=list(NETWORKS))
def old_run(request, days, tmp_path_factory) -> tuple[str, dict]:
    """A model trained on day 1: its network's name and final metrics."""
    out = tmp_path_factory.mktemp("old") / "run"
    return request.param, train(
        compose_config("train", overrides(days["day1"], days["day1_test"], *NETWORKS[request.param]), out)
    )


def continued(days, old_checkpoint: str, tmp_path: Path, *extra: str):
    """The config of a run continuing `old_checkpoint` on day 2 (no override of the network's settings)."""
    return compose_config(
        "train", overrides(days["day2"], days["day2_test"], f"init_from={old_checkpoint}", *extra), tmp_path / "new"
    )


def test_known_items_keep_their_rows_new_ones_are_fresh_vanished_stay(days, old_run, tmp_path):
    _, metrics = old_run
    old = load_network(metrics["checkpoint"])
    cfg = continued(days, metrics["checkpoint"], tmp_path)
    prepare_run(cfg)
    model = model_from_checkpoint(cfg, instantiate(cfg.data))
    n_old = len(old.item_index)

    index = model.item_index
    day1, day2 = (set(pd.read_csv(days[d], sep="\t").ItemId) for d in ("day1", "day2"))
    new_items, vanished = sorted(day2 - day1), sorted(day1 - day2)
    assert set(new_items) <= set(NEW_ITEMS) and len(new_items) > 30 and len(vanished) > 10
    assert len(index) == n_old + len(new_items)
    np.testing.assert_array_equal(index.ids[:n_old], old.item_index.ids)  # known items keep their index
    assert list(index.ids[n_old:]) == new_items  # new ones appended
    assert (index.counts[index.lookup(np.array(vanished)) - 1] == 0).all()  # vanished ones kept, with 0 clicks
    assert (index.counts > 0).sum() == len(day2)
    assert model.net.n_members == old.network.n_members  # the checkpoint's network, not the config's default

    grown, trained = model.net.state_dict(), old.network.state_dict()
    for name, weights in trained.items():
        if name == "item_embedding":  # padding row 0, then the known items
            torch.testing.assert_close(grown[name][:, : n_old + 1], weights, rtol=0, atol=0)
        elif name in ("output.weight", "output.bias", "output_bias"):
            torch.testing.assert_close(grown[name][:, :n_old], weights, rtol=0, atol=0)
        else:
            torch.testing.assert_close(grown[name], weights, rtol=0, atol=0)

    # New rows are a fresh model's: the same seed and catalog give the same rows.
    prepare_run(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.known_items = old.item_index
    datamodule.setup("fit")
    fresh = build_model(cfg, datamodule).net.state_dict()
    torch.testing.assert_close(grown["item_embedding"][:, n_old + 1 :], fresh["item_embedding"][:, n_old + 1 :])
    for name in ("output.weight", "output.bias", "output_bias"):
        if name in fresh:
            torch.testing.assert_close(grown[name][:, n_old:], fresh[name][:, n_old:], rtol=0, atol=0)
    assert not torch.equal(
        grown["item_embedding"][:, n_old + 1 :], torch.zeros_like(fresh["item_embedding"][:, n_old + 1 :])
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.hidden=48", "model.hidden"),
        ("model.num_layers=2", "model.num_layers"),
        ("model.embedding_dim=16", "model.embedding_dim"),
    ],
)
def test_conflicting_network_setting_is_an_error_naming_it(days, old_run, tmp_path, override, key):
    _, metrics = old_run
    cfg = continued(days, metrics["checkpoint"], tmp_path, override)
    with pytest.raises(ValueError, match=rf"{key}=\d+ conflicts with init_from"):
        model_from_checkpoint(cfg, instantiate(cfg.data))


def test_resuming_and_init_from_together_is_an_error(days, old_run, tmp_path):
    _, metrics = old_run
    cfg = continued(days, metrics["checkpoint"], tmp_path, f"ckpt_path={metrics['checkpoint']}")
    with pytest.raises(ValueError, match="give one of them"):
        train(cfg)


def _predictions(scorer, datamodule) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks and target indices of every prediction of the test split."""
    ranks, targets = [], []
    with torch.no_grad():
        for batch in datamodule.full_dataloader("test"):
            ranks.append(rank_batch(scorer, batch).ranks)
            targets.append(batch[:, 1:][batch[:, 1:] > 0])
    return torch.cat(ranks), torch.cat(targets)


def test_fine_tuned_model_learns_the_new_items_with_a_fresh_optimizer(days, old_run, tmp_path):
    name, old_metrics = old_run
    if name != "untied":
        pytest.skip("one network suffices for the behaviour")
    cfg = continued(days, old_metrics["checkpoint"], tmp_path)
    metrics = train(cfg)
    assert metrics["init_from"] == old_metrics["checkpoint"]

    # A fresh optimizer: its step count and the run's are this run's steps alone.
    new = read_checkpoint(Path(metrics["output_dir"]) / "checkpoints" / "last.ckpt")
    datamodule = instantiate(cfg.data)
    datamodule.known_items = load_network(old_metrics["checkpoint"]).item_index
    datamodule.setup("fit")
    steps = metrics["epochs"] * len(datamodule.train_dataloader())
    assert new["global_step"] == steps and metrics["epochs"] == 3
    assert all(int(state["step"]) == steps for state in new["optimizer_states"][0]["state"].values())

    # On day 2's held-out sessions, over the grown catalog: the old model never recommends a new item.
    tuned, old = load_network(metrics["checkpoint"]), load_network(old_metrics["checkpoint"])
    catalog = tuned.item_index
    tuned_ranks, targets = _predictions(CatalogScorer(tuned.scorer(), catalog, catalog), datamodule)
    old_ranks, _ = _predictions(CatalogScorer(old.scorer(), old.item_index, catalog), datamodule)
    is_new = torch.from_numpy(np.isin(catalog.ids, list(NEW_ITEMS)))[targets - 1]
    assert 0.05 < is_new.float().mean() < 0.5
    assert (old_ranks[is_new] > 20).all()
    assert (tuned_ranks[is_new] <= 20).float().mean() > 0.3
    assert (tuned_ranks <= 20).float().mean() > (old_ranks <= 20).float().mean() + 0.05


def test_init_optimizer_carry_continues_the_checkpoints_state_with_fresh_rows_for_new_items(days, old_run, tmp_path):
    name, old_metrics = old_run
    if name != "untied":
        pytest.skip("one network suffices for the behaviour")
    old = read_checkpoint(old_metrics["checkpoint"])
    (old_state,) = old["optimizer_states"]
    cfg = continued(days, old_metrics["checkpoint"], tmp_path, "init_optimizer=carry")
    prepare_run(cfg)
    model = model_from_checkpoint(cfg, instantiate(cfg.data))
    assert model.carried_optimizer_state["param_groups"] == old_state["param_groups"]
    optimizer = torch.optim.Adam(model.parameters())  # the recipe's (TINY): its state starts empty
    carry_optimizer_state(optimizer, model.carried_optimizer_state)
    n_old = len(load_network(old_metrics["checkpoint"]).item_index)
    names = [name for name, _ in model.named_parameters()]
    for position, param in enumerate(model.parameters()):
        was, now = old_state["state"][position], optimizer.state[param]
        assert int(now["step"]) == int(was["step"]) > 0
        for key in ("exp_avg", "exp_avg_sq"):
            assert now[key].shape == param.shape
            if names[position] == "net.item_embedding":  # padding row 0, the known items, then the new ones
                torch.testing.assert_close(now[key][:, : n_old + 1], was[key], rtol=0, atol=0)
                assert not now[key][:, n_old + 1 :].any()
            elif names[position].startswith("net.output."):
                torch.testing.assert_close(now[key][:, :n_old], was[key], rtol=0, atol=0)
                assert not now[key][:, n_old:].any()
            else:
                torch.testing.assert_close(now[key], was[key], rtol=0, atol=0)

    # Training continues the step count (a fresh optimizer's would be this run's steps alone, test above).
    metrics = train(continued(days, old_metrics["checkpoint"], tmp_path / "trained", "init_optimizer=carry"))
    new = read_checkpoint(Path(metrics["output_dir"]) / "checkpoints" / "last.ckpt")
    steps = new["global_step"]
    assert all(
        int(state["step"]) == int(old_state["state"][0]["step"]) + steps
        for state in new["optimizer_states"][0]["state"].values()
    )

    scheduled = torch.optim.Adam(model.parameters())
    torch.optim.lr_scheduler.LambdaLR(scheduled, lambda step: 1.0)  # a schedule adds initial_lr to the groups
    carry_optimizer_state(scheduled, model.carried_optimizer_state)
    assert int(scheduled.state[next(iter(model.parameters()))]["step"]) == int(old_state["state"][0]["step"])
    with pytest.raises(ValueError, match=r"init_optimizer=carry: init_from's optimizer is not this run's Adagrad"):
        carry_optimizer_state(torch.optim.Adagrad(model.parameters()), old_state)
    with pytest.raises(ValueError, match=r"init_optimizer='keep': expected fresh .* or carry"):
        model_from_checkpoint(
            continued(days, old_metrics["checkpoint"], tmp_path / "bad", "init_optimizer=keep"), instantiate(cfg.data)
        )
