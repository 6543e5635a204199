"""refit: once validation split off data.train has chosen the epochs, a fresh network trains on all of data.train
(the validation sessions, the newest, included) and is the one tested (lstm_rec.jobs.train, lstm_rec.jobs.auto)."""

from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, compose_config
from lstm_rec.checkpoint import read_checkpoint
from lstm_rec.data.synthetic import generate_events
from lstm_rec.jobs.runs import checkpoint_epochs
from lstm_rec.jobs.train import train
from lstm_rec.serving.recommender import Recommender

OLD_SESSIONS, NEW_SESSIONS = 630, 70  # validation: the last 10% of 700 sessions, exactly the new ones
NEW_A, NEW_B = 900, 901  # items clicked only in the newest sessions, always A then B


def _frame(events: pd.DataFrame) -> pd.DataFrame:
    return events.rename(columns={"session": "SessionId", "item": "ItemId", "time": "Time"})[
        ["SessionId", "ItemId", "Time"]
    ]


def _sessions(first_session: int, count: int, start_time: int) -> pd.DataFrame:
    """`count` sessions A, B."""
    rows = [
        (first_session + s, item, start_time + 100 * s + i)
        for s in range(count)
        for i, item in enumerate((NEW_A, NEW_B))
    ]
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> dict:
    """A shop whose newest 70 sessions (the validation split) end with two new items, A B A B; the test has more of
    the usual sessions and 20 sessions A, B."""
    folder = tmp_path_factory.mktemp("refit")
    events = _frame(generate_events(n_sessions=OLD_SESSIONS + NEW_SESSIONS + 40, n_items=300, seed=5))
    train = events[events.SessionId < OLD_SESSIONS + NEW_SESSIONS]
    newest = train[train.SessionId >= OLD_SESSIONS].groupby("SessionId").Time.max()
    # What the selected network validates on: the newest sessions' clicks on items of the older sessions.
    held = train[train.SessionId >= OLD_SESSIONS]
    sizes = held[held.ItemId.isin(train[train.SessionId < OLD_SESSIONS].ItemId)].groupby("SessionId").size()
    tails = [
        (session, item, last + 1 + position)
        for session, last in newest.items()
        for position, item in enumerate((NEW_A, NEW_B, NEW_A, NEW_B))
    ]
    train = pd.concat([train, pd.DataFrame(tails, columns=train.columns)]).sort_values(["SessionId", "Time"])
    end = int(train.Time.max()) + 1000
    test = events[events.SessionId >= OLD_SESSIONS + NEW_SESSIONS]
    test = pd.concat([test.assign(Time=test.Time - test.Time.min() + end), _sessions(20_000, 20, end + 10**6)])
    paths = {"train": folder / "train.tsv", "test": folder / "test.tsv"}
    train.to_csv(paths["train"], sep="\t", index=False)
    test.to_csv(paths["test"], sep="\t", index=False)
    return paths | {"valid_predictions": int((sizes[sizes >= 2] - 1).sum())}


def _overrides(log: dict, *extra: str) -> list[str]:
    tiny = [o for o in TINY if not o.startswith(("data.n_", "refit"))]
    return [*tiny, "num_threads=1", "data=files", f"data.train={log['train']}", f"data.test={log['test']}", *extra]


@pytest.fixture(scope="module")
def refitted(log, tmp_path_factory) -> dict:
    """The default refit=auto: validation withholds 11% of this log's predictions, so the run refits."""
    out = tmp_path_factory.mktemp("run") / "run"
    metrics = train(compose_config("train", _overrides(log, "trainer.max_epochs=4", "test_selected=true"), out))
    return metrics | {"valid_predictions": log["valid_predictions"]}


def test_refit_trains_on_the_validation_sessions_and_is_the_model_tested(refitted):
    run = Path(refitted["output_dir"])
    assert refitted["checkpoint"] == str(run / "refit" / "checkpoints" / "last.ckpt")
    assert refitted["selected_checkpoint"].startswith(str(run / "checkpoints"))
    # The selected network never saw A or B: both rank the same test predictions, and the test's 20 A -> B ones are
    # misses for it (it cannot recommend B), while the refitted one knows both and puts B first after A, having
    # learned it from the validation sessions alone.
    n = refitted["test/n_predictions"]
    assert refitted["selected/test/n_predictions"] == n
    assert refitted["selected/test/recall@20"] * n <= n - 20 + 1e-6
    assert read_checkpoint(refitted["selected_checkpoint"])["lstm_rec"]["item_ids"].tolist().count(NEW_A) == 0
    top = Recommender.from_checkpoint(refitted["checkpoint"]).recommend([NEW_A], k=20)
    assert NEW_B in [item for item, _ in top]


def test_refit_trains_the_epochs_validation_chose(refitted):
    selected = read_checkpoint(refitted["selected_checkpoint"])["epoch"] + 1
    assert refitted["refit_epochs"] == selected
    assert read_checkpoint(refitted["checkpoint"])["epoch"] + 1 == selected
    # The cost is both fits: every epoch of the first (its last checkpoint's count), then the refit's.
    first = read_checkpoint(Path(refitted["output_dir"]) / "checkpoints" / "last.ckpt")["lstm_rec"]["train_seconds"]
    assert refitted["train_seconds"] == pytest.approx(first + refitted["refit_train_seconds"])
    assert refitted["refit_train_seconds"] > 0


def test_checkpoint_epochs_reads_the_checkpoints_own_record(refitted):
    # The helper tune.py and the refit share: the file's "epoch" record + 1, whatever the file's name.
    selected = read_checkpoint(refitted["selected_checkpoint"])["epoch"] + 1
    assert checkpoint_epochs(refitted["selected_checkpoint"]) == selected
    assert checkpoint_epochs(refitted["checkpoint"]) == selected  # refit/checkpoints/last.ckpt
    assert checkpoint_epochs(None) is None and checkpoint_epochs("None") is None


def test_the_validation_metrics_stay_those_of_the_selected_network(refitted):
    # The held-out sessions as the selected network knows them: without A and B, unknown to it and dropped.
    assert refitted["val/n_predictions"] == refitted["valid_predictions"]
    run = Path(refitted["output_dir"])
    assert (run / "refit" / "curves.png").is_file() and (run / "curves.png").is_file()
    assert (run / "refit" / "tensorboard").is_dir()
    assert (run / "metrics.json").is_file() and not (run / "refit" / "metrics.json").exists()


def test_refit_false_tests_the_selected_network(log, tmp_path):
    metrics = train(compose_config("train", _overrides(log, "refit=false"), tmp_path / "run"))
    assert metrics["checkpoint"].startswith(str(tmp_path / "run" / "checkpoints"))
    assert "refit_epochs" not in metrics and not (tmp_path / "run" / "refit").exists()


def test_refit_true_with_a_validation_file_fails_before_training(log, tmp_path):
    cfg = compose_config("train", _overrides(log, "refit=true", f"data.valid={log['test']}"), tmp_path / "run")
    with pytest.raises(ValueError, match=r"refit=true .* come from data\.valid"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_refit_under_init_from_starts_from_the_checkpoint_too(log, refitted, tmp_path):
    """A refitted init_from run grows the checkpoint's item index in both fits: the known items keep their rows'
    positions, the new data's items are appended."""
    old = read_checkpoint(refitted["selected_checkpoint"])["lstm_rec"]["item_ids"].tolist()  # without A and B
    overrides = _overrides(log, "refit=true", "trainer.max_epochs=2", f"init_from={refitted['selected_checkpoint']}")
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["checkpoint"].endswith("refit/checkpoints/last.ckpt") and metrics["init_from"]
    ids = read_checkpoint(metrics["checkpoint"])["lstm_rec"]["item_ids"].tolist()
    assert ids[: len(old)] == old and {NEW_A, NEW_B} <= set(ids[len(old) :])


def test_a_refit_run_again_in_its_directory_replaces_the_earlier_refit(log, tmp_path, caplog):
    stale = tmp_path / "run" / "refit" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "last.ckpt").write_text("an interrupted refit's file")
    (stale / "epoch_007.ckpt").write_text("another")
    cfg = compose_config("train", _overrides(log, "refit=true", "trainer.max_epochs=1"), tmp_path / "run")
    with caplog.at_level("WARNING", logger="lstm_rec.jobs.train"):
        metrics = train(cfg)
    assert "refit: removing 2 checkpoint(s) of an earlier refit" in caplog.text
    assert metrics["checkpoint"] == str(stale / "last.ckpt")
    assert read_checkpoint(metrics["checkpoint"])["epoch"] == 0  # this refit's single epoch
    assert not (stale / "epoch_007.ckpt").exists()


@pytest.fixture(scope="module")
def topped_up(log, tmp_path_factory) -> dict:
    """refit=top_up: the selected network trains 10 more epochs (auto_refit.top_up_epochs) on the validation
    sessions (the tiny recipe's Adam needs more than the default 3 to learn A and B from them)."""
    out = tmp_path_factory.mktemp("top_up") / "run"
    overrides = _overrides(log, "refit=top_up", "trainer.max_epochs=4", "auto_refit.top_up_epochs=10")
    return train(compose_config("train", [*overrides, "test_selected=true"], out))


def test_without_test_selected_only_the_topped_up_network_ranks_the_test_alike(topped_up, log, tmp_path):
    # The default: the selected network's test ranking (selected/test/...) is left out; the model tested, its
    # figures and everything else are as with it.
    overrides = _overrides(log, "refit=top_up", "trainer.max_epochs=4", "auto_refit.top_up_epochs=10")
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert not [key for key in metrics if key.startswith("selected/")]
    assert [key for key in topped_up if key.startswith("selected/test/")]
    for key in ("test/recall@20", "test/mrr@20", "test/n_predictions", "pop/test/recall@20", "val/mrr@20"):
        assert metrics[key] == pytest.approx(topped_up[key], abs=1e-6)
    assert metrics["selected_checkpoint"].endswith(Path(topped_up["selected_checkpoint"]).name)


def test_a_top_up_without_a_checkpoint_to_continue_tests_the_selected_network(log, tmp_path):
    # The top-up is skipped (nothing saved to continue from): the selected network is the model, and it is tested.
    overrides = _overrides(log, "refit=top_up", "trainer.max_epochs=2", "callbacks.model_checkpoint=null")
    metrics = train(compose_config("train", [*overrides, "+trainer.enable_checkpointing=false"], tmp_path / "run"))
    assert metrics["checkpoint"] is None and "top_up_epochs" not in metrics
    assert metrics["test/n_predictions"] == metrics["pop/test/n_predictions"] > 0
    assert metrics["test/recall@20"] > metrics["pop/test/recall@20"]


def test_top_up_trains_the_selected_network_on_the_validation_sessions_and_is_the_model_tested(topped_up, log):
    run = Path(topped_up["output_dir"])
    assert topped_up["checkpoint"] == str(run / "top_up" / "checkpoints" / "last.ckpt")
    selected, top = read_checkpoint(topped_up["selected_checkpoint"]), read_checkpoint(topped_up["checkpoint"])
    assert topped_up["selected_checkpoint"].startswith(str(run / "checkpoints"))
    # The selected network's items keep their positions; those only the validation sessions hold (A, B and a few
    # others) follow: the top-up's items are all of data.train's.
    old, ids = selected["lstm_rec"]["item_ids"].tolist(), top["lstm_rec"]["item_ids"].tolist()
    assert ids[: len(old)] == old and {NEW_A, NEW_B} <= set(ids[len(old) :])
    clicks = pd.read_csv(log["train"], sep="\t").ItemId.value_counts()
    assert sorted(ids) == sorted(clicks.index)
    # Its counts (its negatives' law, the checkpoint's popularity) are every click of data.train, as a refit's are.
    assert top["lstm_rec"]["item_counts"].tolist() == clicks.reindex(ids).tolist()
    assert top["epoch"] + 1 == topped_up["top_up_epochs"] == 10
    # Learned from the validation sessions alone: B after A. Both networks rank the same test predictions; the 20
    # A -> B ones are misses for the selected network, which cannot recommend B.
    top_items = Recommender.from_checkpoint(topped_up["checkpoint"]).recommend([NEW_A], k=20)
    assert NEW_B in [item for item, _ in top_items]
    n = topped_up["test/n_predictions"]
    assert topped_up["selected/test/n_predictions"] == topped_up["pop/test/n_predictions"] == n
    assert topped_up["selected/test/recall@20"] * n <= n - 20 + 1e-6
    assert topped_up["test/recall@20"] > topped_up["selected/test/recall@20"]


def test_top_up_counts_both_fits_and_keeps_the_selected_networks_validation(topped_up, log):
    run = Path(topped_up["output_dir"])
    first = read_checkpoint(run / "checkpoints" / "last.ckpt")["lstm_rec"]["train_seconds"]
    assert topped_up["train_seconds"] == pytest.approx(first + topped_up["top_up_train_seconds"])
    assert topped_up["top_up_train_seconds"] > 0
    assert topped_up["val/n_predictions"] == log["valid_predictions"]  # the selected network's validation
    assert (run / "top_up" / "checkpoints").is_dir() and not (run / "refit").exists()
