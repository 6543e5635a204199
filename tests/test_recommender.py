"""The Python API on a trained checkpoint: top-k, batches, live sessions, unknown items, fallbacks."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_config, run_script, write_events
from lstm_rec import Recommender
from lstm_rec.checkpoint import CheckpointError
from lstm_rec.data import SyntheticDataModule
from lstm_rec.evaluation import rank_batch
from lstm_rec.jobs.predict import recommend_job
from lstm_rec.prior import PriorScorer


@pytest.fixture(scope="module")
def rec(checkpoint):
    return Recommender.from_checkpoint(checkpoint, device="cpu")


def is_ensemble(request) -> bool:
    return "ensemble" in request.node.callspec.id


def test_the_prior_travels_in_the_checkpoint(rec, request):
    if is_ensemble(request):
        assert rec.prior.scores.std() > 0 and rec.prior.weight == 0.5  # a prior that differs between items
    else:
        assert rec.prior is None


def test_recent_clicks_refresh_the_prior(checkpoint, caplog, request):
    rec = Recommender.from_checkpoint(checkpoint)  # its own copy: the module's recommender stays as trained
    ids = rec.item_index.ids
    session = [ids[0], ids[1]]
    before = dict(rec.recommend(session, k=rec.n_items))
    trained_prior = torch.zeros(rec.n_items) if rec.prior is None else rec.prior.scores.clone()
    with caplog.at_level(logging.WARNING):
        unknown = rec.set_recent_clicks([ids[5], ids[5], ids[7], "no-such-item"], weight=0.5)
    assert unknown == ["no-such-item"] and "no-such-item" in caplog.text
    expected = torch.zeros(rec.n_items)
    expected[5], expected[7] = 0.5 * np.log(3.0), 0.5 * np.log(2.0)
    torch.testing.assert_close(rec.prior.scores, expected)
    # Every score moves by the change of its item's prior.
    after = dict(rec.recommend(session, k=rec.n_items))
    for position in (0, 5, 7, 9):
        change = float(expected[position] - trained_prior[position])
        assert after[ids[position]] - before[ids[position]] == pytest.approx(change, abs=1e-4)
    # By default the model's own weight (the one it was trained with, else 0); 0 switches the prior off.
    assert rec.recent_weight == (0.5 if is_ensemble(request) else 0.0)
    rec.set_recent_clicks([ids[5]])
    assert rec.prior.scores[5].item() == pytest.approx(rec.recent_weight * np.log(2.0))
    rec.set_recent_clicks([ids[5]], weight=0.0)
    assert rec.prior.scores.eq(0).all()
    with pytest.raises(ValueError, match="weight must be >= 0"):
        rec.set_recent_clicks([ids[5]], weight=-1.0)


@pytest.fixture(scope="module")
def test_sessions(rec):
    datamodule = SyntheticDataModule(n_sessions=3000, n_items=200, seed=42)
    datamodule.item_index = rec.item_index
    datamodule.setup("test")
    sessions = datamodule.test_sessions
    return [rec.item_index.ids[sessions.session(s) - 1].tolist() for s in range(20)]


def test_top_k_agrees_with_the_evaluation_path(rec, test_sessions):
    ids = rec.item_index.ids
    for session in test_sessions[:5]:
        batch = torch.tensor([rec.item_index.lookup(np.array(session)).tolist()])
        ranked = rank_batch(rec.scorer, batch, k_max=10)
        for position in range(len(session) - 1):
            top = rec.recommend(session[: position + 1], k=10)
            assert [item for item, _ in top] == ids[ranked.top_items[position].numpy()].tolist()


def test_incremental_equals_whole_prefix(rec, test_sessions):
    for session in test_sessions:
        state = rec.start()
        for position, item in enumerate(session):
            state, top = rec.step(state, item, k=20)
            whole = rec.recommend(session[: position + 1], k=20)
            assert [i for i, _ in top] == [i for i, _ in whole]
            np.testing.assert_allclose([s for _, s in top], [s for _, s in whole], rtol=1e-5, atol=1e-5)
    assert len(state.seen) == len(session)


def test_batch_equals_one_by_one(rec, test_sessions):
    batch = rec.recommend_batch(test_sessions, k=5)
    for session, top in zip(test_sessions, batch, strict=True):
        assert [i for i, _ in top] == [i for i, _ in rec.recommend(session, k=5)]


def test_answers_are_original_ids_with_scores(rec, test_sessions):
    top = rec.recommend(test_sessions[0], k=7)
    assert len(top) == 7 and not top.fallback
    assert all(isinstance(item, int) and item in set(rec.item_index.ids.tolist()) for item, _ in top)
    scores = [score for _, score in top]
    assert scores == sorted(scores, reverse=True)


def test_exclude_seen(rec, test_sessions):
    session = test_sessions[1]
    top = rec.recommend(session, k=30, exclude_seen=True)
    assert not set(session) & {item for item, _ in top}
    state = rec.start()
    for item in session:
        state, live = rec.step(state, item, k=30, exclude_seen=True)
    assert [i for i, _ in live] == [i for i, _ in top]


def test_unknown_items_are_skipped_with_a_warning(rec, test_sessions, caplog):
    session = test_sessions[2]
    with caplog.at_level(logging.WARNING):
        top = rec.recommend([*session[:2], "no-such-item", 10**12], k=5)
    assert "skipping 2 item ids" in caplog.text
    assert top.unknown == ["no-such-item", 10**12]
    assert [i for i, _ in top] == [i for i, _ in rec.recommend(session[:2], k=5)]


def test_empty_or_unknown_session_falls_back_to_popularity(rec):
    counts = dict(zip(rec.item_index.ids.tolist(), rec.item_index.counts.tolist(), strict=True))
    for items in ([], [-1, -2]):
        top = rec.recommend(items, k=3)
        assert top.fallback
        assert [score for _, score in top] == sorted(counts.values(), reverse=True)[:3]
        assert all(counts[item] == score for item, score in top)
    state, top = rec.step(rec.start(), -5, k=3)
    assert top.fallback and not state.seen


def test_bad_k(rec):
    with pytest.raises(ValueError, match="k must be a positive"):
        rec.recommend([1], k=0)


def test_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    data = Path(checkpoint).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        Recommender.from_checkpoint(tmp_path / "cut.ckpt")


def test_recommend_job_batch_mode_per_session_and_per_position(checkpoint, rec, test_sessions, tmp_path):
    rows = [(s, item, float(t)) for s, session in enumerate(test_sessions[:3]) for t, item in enumerate(session)]
    clicks = write_events(tmp_path / "clicks.tsv", rows)
    for per_position, output in ((False, "top.csv"), (True, "top.parquet")):
        overrides = [f"ckpt_path={checkpoint}", f"input={clicks}", f"output={tmp_path / output}", "k=4"]
        table = recommend_job(compose_config("recommend", [*overrides, f"per_position={per_position}"], tmp_path))
        saved = pd.read_csv(tmp_path / output) if output.endswith(".csv") else pd.read_parquet(tmp_path / output)
        assert len(saved) == len(table)
        for s, session in enumerate(test_sessions[:3]):
            mine = saved[saved["session"] == s]
            if per_position:
                assert sorted(mine["position"].unique()) == list(range(1, len(session) + 1))
                mine = mine[mine["position"] == 2]
                session = session[:2]
            assert mine.sort_values("rank")["item"].tolist() == [i for i, _ in rec.recommend(session, k=4)]


def test_positions_answer_as_every_prefix_one_by_one(rec, test_sessions, monkeypatch):
    ids = test_sessions[3]
    sessions = [
        ["no-such-item", *ids[:4], ids[1], -7, *test_sessions[4][:3]],  # unknown first and between, a repeat
        [],
        [-1, -2],  # nothing known: popularity after every click
        test_sessions[5],
    ]
    # All prefixes scored at once; three at a time, across sessions, with the session's items left out.
    for exclude_seen, chunk in ((False, 2**22), (True, rec.n_items * 3)):
        monkeypatch.setattr("lstm_rec.serving.recommender.POSITION_SCORES", chunk)
        answers = rec.recommend_positions_batch(sessions, k=7, exclude_seen=exclude_seen)
        for session, after_each in zip(sessions, answers, strict=True):
            assert len(after_each) == len(session)
            for position, top in enumerate(after_each, start=1):
                whole = rec.recommend(session[:position], k=7, exclude_seen=exclude_seen)
                assert [i for i, _ in top] == [i for i, _ in whole]
                np.testing.assert_allclose([s for _, s in top], [s for _, s in whole], rtol=1e-5, atol=1e-5)
                assert (top.fallback, top.unknown) == (whole.fallback, whole.unknown)
    assert answers[0][0].fallback and answers[0][0].unknown == ["no-such-item"]
    assert rec.recommend_positions_batch([]) == []
    single = rec.recommend_positions(sessions[3], k=7, exclude_seen=True)
    assert [[i for i, _ in top] for top in single] == [[i for i, _ in top] for top in answers[3]]


def test_per_position_runs_the_network_once_per_click(checkpoint, rec, test_sessions, tmp_path, monkeypatch):
    long_session = [test_sessions[6][i % len(test_sessions[6])] for i in range(1000)]
    sessions = [test_sessions[0], long_session, *test_sessions[1:3]]
    rows = [(s, item, float(t)) for s, session in enumerate(sessions) for t, item in enumerate(session)]
    clicks = write_events(tmp_path / "clicks.tsv", rows)
    encoded = []  # clicks (padding left out) that each call of the network runs through the LSTM
    encode = PriorScorer.encode

    def counted(scorer, items):
        encoded.append(int((items > 0).sum()))
        return encode(scorer, items)

    monkeypatch.setattr(PriorScorer, "encode", counted)
    overrides = [f"ckpt_path={checkpoint}", f"input={clicks}", f"output={tmp_path / 'top.csv'}", "k=3"]
    table = recommend_job(compose_config("recommend", [*overrides, "per_position=true"], tmp_path))
    assert sum(encoded) == sum(map(len, sessions))  # not the 500,500 clicks of the long session's prefixes
    assert len(table) == 3 * sum(map(len, sessions))
    for position in (1, 2, 999, 1000):
        mine = table[(table["session"] == 1) & (table["position"] == position)]
        assert mine.sort_values("rank")["item"].tolist() == [i for i, _ in rec.recommend(long_session[:position], k=3)]


def test_recommend_script_prints_the_list(checkpoint, rec, test_sessions, tmp_path):
    session = test_sessions[0][:3]
    items = f"items=[{','.join(map(str, session))}]"
    result = run_script("scripts/recommend.py", f"ckpt_path={checkpoint}", items, "k=3", f"hydra.run.dir={tmp_path}")
    for rank, (item, _) in enumerate(rec.recommend(session, k=3), start=1):
        assert f"| {rank} | {item} |" in result.stdout


def test_recommend_job_needs_items_or_input(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="either items"):
        recommend_job(compose_config("recommend", [f"ckpt_path={checkpoint}"], tmp_path))


def test_recommend_job_reads_input_times_in_any_unit_and_names_a_bad_one(checkpoint, rec, test_sessions, tmp_path):
    # The clicks' times only order each session: in ms (told by their size) or ISO text, the lists are the same.
    session = test_sessions[0]
    stamps = {"ms": [1_430_438_400_000 + 1000 * t for t in range(len(session))],
              "iso": [f"2015-05-01T00:00:{t:02d}Z" for t in range(len(session))]}  # fmt: skip
    for name, times in stamps.items():
        rows = [(1, item, t) for item, t in zip(session, times, strict=True)]
        clicks = write_events(tmp_path / f"{name}.csv", rows, sep=",")
        overrides = [f"ckpt_path={checkpoint}", f"input={clicks}", f"output={tmp_path / name}.csv", "k=4"]
        table = recommend_job(compose_config("recommend", overrides, tmp_path / name))
        assert table.sort_values("rank")["item"].tolist() == [i for i, _ in rec.recommend(session, k=4)]
    with pytest.raises(ValueError, match=r"^time_unit must be one of \['auto', 's', 'ms'.*got 'week'"):
        recommend_job(compose_config("recommend", [*overrides, "time_unit=week"], tmp_path / "bad"))
