"""One id type across files: evaluation, batch recommend and serving inputs are matched in the item index's own
type ("0189" is 189 for an integer index, 42 is "42" for a text one), and an input of mostly unknown ids stops the
job with an error that names the file, the counts and a few ids."""

import logging

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import compose_config, write_events
from lstm_rec.checkpoint import TrainedModel
from lstm_rec.data import FileDataModule, ItemIndex
from lstm_rec.data.io import DataFileError
from lstm_rec.jobs.predict import recommend_job
from lstm_rec.model import build_network
from lstm_rec.serving.http import create_app
from lstm_rec.serving.recommender import Recommender

INTEGER_INDEX = ItemIndex.from_items(np.array([7, 42, 189, 42]))  # indices: 7 -> 1, 42 -> 2, 189 -> 3
TEXT_INDEX = ItemIndex.from_items(np.array(["0189", "42", "abc"], dtype=object))  # "0189" 1, "42" 2, "abc" 3
# Training rows: every session of integer ids, so the index holds int64 ids.
TRAIN = [(1, 7, 1.0), (1, 42, 2.0), (2, 189, 3.0), (2, 7, 4.0), (3, 42, 5.0), (3, 189, 6.0)]


def test_an_integer_index_takes_every_id_that_can_be_an_integer():
    ids = ["0189", "42", "abc", "+7", 42.0, 7.5, True, "4 2", "", None, 2**70, np.int32(7), "0" * 30 + "42", "9" * 5000]
    assert INTEGER_INDEX.lookup(np.array(ids, dtype=object)).tolist() == [3, 2, 0, 1, 2, 0, 0, 0, 0, 0, 0, 1, 2, 0]
    assert INTEGER_INDEX.lookup(np.array(["189", "7"])).tolist() == [3, 1]  # numpy text arrays too


def test_a_text_index_takes_integers_as_their_decimal_text():
    ids = np.array([42, 189, "0189", "abc", 42.0, "42.0", True], dtype=object)
    assert TEXT_INDEX.lookup(ids).tolist() == [2, 0, 1, 3, 2, 0, 0]
    assert TEXT_INDEX.lookup(np.array([42, 7])).tolist() == [2, 0]  # an int64 array


def setup_files(tmp_path, test_rows, **kwargs) -> FileDataModule:
    data = FileDataModule(
        train=str(write_events(tmp_path / "train.tsv", TRAIN)),
        test=str(write_events(tmp_path / "test.tsv", test_rows)),
        valid_fraction=0,
        **kwargs,
    )
    data.setup("test")
    return data


def test_one_text_id_in_a_test_file_leaves_the_others_matched(tmp_path, caplog):
    # "abc" makes the reader keep every id of test.tsv as text; they are matched as integers all the same.
    rows = [(1, "0189", 1.0), (1, "42", 2.0), (1, "7", 3.0), (2, "42", 4.0), (2, "abc", 5.0), (2, "189", 6.0)]
    with caplog.at_level(logging.INFO):
        data = setup_files(tmp_path, rows)
    assert data.test_sessions.items.tolist() == [3, 2, 1, 2, 3]
    assert data.test_sessions.offsets.tolist() == [0, 3, 5]
    assert f"data.test '{tmp_path / 'test.tsv'}': 1 of 6 rows (17%) have an item id that is not in" in caplog.text


def test_a_test_file_of_mostly_unknown_ids_is_an_error_naming_it(tmp_path):
    rows = [(1, "x1", 1.0), (1, "42", 2.0), (2, "x2", 3.0), (2, "x3", 4.0), (2, "x1", 5.0)]
    with pytest.raises(DataFileError) as error:
        setup_files(tmp_path, rows)
    assert str(error.value) == (
        f"data.test '{tmp_path / 'test.tsv'}': 4 of 5 rows (80%) have an item id that is not in the item index, "
        "e.g. ['x1', 'x2', 'x3']; the index holds 3 integer ids (e.g. [7, 42, 189]), and ids are matched in its "
        "type. More than 50% of rows unknown means another catalog or another column: give a log of the items the "
        "model was trained on, or name its item column (item_col)"
    )


def test_half_the_rows_unknown_is_not_most(tmp_path):
    data = setup_files(tmp_path, [(1, 42, 1.0), (1, 7, 2.0), (1, 5, 3.0), (1, 6, 4.0)])
    assert data.test_sessions.items.tolist() == [2, 1]


def tiny_recommender(index: ItemIndex) -> Recommender:
    torch.manual_seed(0)
    network = build_network(len(index), {"embedding_dim": 4, "hidden": 4}).eval()
    return Recommender(TrainedModel(network, index, None, 0.0))


def recommend(tmp_path, monkeypatch, rows, index=INTEGER_INDEX):
    rec = tiny_recommender(index)
    monkeypatch.setattr(Recommender, "from_checkpoint", classmethod(lambda cls, path, device="cpu": rec))
    clicks = write_events(tmp_path / "clicks.csv", rows, sep=",")
    overrides = ["ckpt_path=unused.ckpt", f"input={clicks}", f"output={tmp_path / 'top.csv'}", "k=2"]
    return rec, recommend_job(compose_config("recommend", overrides, tmp_path))


def test_batch_recommend_matches_text_ids_in_the_index_type(tmp_path, monkeypatch):
    rows = [(1, "0189", 1.0), (1, "42", 2.0), (2, "7", 3.0), (2, "abc", 4.0)]
    rec, table = recommend(tmp_path, monkeypatch, rows)
    assert not table["fallback"].any()
    for session, items in ((1, [189, 42]), (2, [7])):
        expected = [item for item, _ in rec.recommend(items, k=2)]
        assert table[table["session"] == session].sort_values("rank")["item"].tolist() == expected


def test_batch_recommend_of_mostly_unknown_ids_is_an_error(tmp_path, monkeypatch):
    rows = [(1, "a1", 1.0), (1, "a2", 2.0), (2, "42", 3.0)]
    with pytest.raises(DataFileError) as error:
        recommend(tmp_path, monkeypatch, rows)
    assert str(error.value).startswith(
        f"input '{tmp_path / 'clicks.csv'}': 2 of 3 rows (67%) have an item id that is not in the item index, "
        "e.g. ['a1', 'a2']; the index holds 3 integer ids (e.g. [7, 42, 189])"
    )
    assert not (tmp_path / "top.csv").exists()


def test_serving_matches_ids_sent_as_the_other_json_type():
    for index, sent, same in ((INTEGER_INDEX, ["189", "0042"], [189, 42]), (TEXT_INDEX, [42, "abc"], ["42", "abc"])):
        rec = tiny_recommender(index)
        answer = TestClient(create_app(rec)).post("/recommend", json={"items": sent, "k": 3}).json()
        assert answer["unknown"] == [] and answer["fallback"] is False
        assert answer["items"] == [item for item, _ in rec.recommend(same, k=3)]


def test_serving_says_loudly_when_most_ids_are_unknown(caplog):
    rec = tiny_recommender(INTEGER_INDEX)
    with caplog.at_level(logging.WARNING):
        unknown = rec.set_recent_clicks(["x", "y", "y", 42])
    assert unknown == ["x", "y", "y"]
    assert (
        "skipping 3 item ids the model does not know (of 4): ['x', 'y']; MOST ids are unknown: the index holds 3 "
        "integer ids (e.g. [7, 42, 189]), and ids are matched in its type"
    ) in caplog.text
