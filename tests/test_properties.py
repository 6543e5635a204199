"""Property-based tests: loaders, filters and metrics on generated input, including the awkward cases.

Each generated click log either loads with every row intact or fails with a DataFileError that names the
file and column; the filters drop exactly the rows their rule says; metrics equal their definitions.
"""

import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lstm_rec.data.io import DataFileError, read_events
from lstm_rec.data.sessions import ITEM, SESSION, TIME, ItemIndex, split_by_start_time, to_sessions
from lstm_rec.metrics import ranking_metrics, target_ranks
from lstm_rec.prepare.events import PrepareError, encode
from lstm_rec.prepare.filters import clean

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

int_ids = st.integers(-(2**63), 2**63 - 1)
huge_ids = st.integers(2**63, 2**80)
# Text ids: any printable unicode, including ones that look like numbers or missing values.
text_ids = st.one_of(
    st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=6),
    st.sampled_from(["01", "1", "-0", "NA", "nan", "1.0", " 7", "N/A", "null", "ÿ", "会话"]),
)
times = st.one_of(
    st.floats(-1e12, 1e12, allow_nan=False), st.sampled_from([0.0, 1.5, 1.5, 1e9]), st.just(math.nan), st.just(math.inf)
)


@st.composite
def click_logs(draw):
    """Rows (session, item, time) of one id type per column, in no particular order, with repeats."""
    session_ids = draw(st.sampled_from([int_ids, huge_ids, text_ids]))
    item_ids = draw(st.sampled_from([int_ids, huge_ids, text_ids]))
    sessions = draw(st.lists(session_ids, min_size=1, max_size=5))  # few sessions, so they repeat
    n = draw(st.integers(1, 25))
    rows = [(draw(st.sampled_from(sessions)), draw(item_ids), draw(times)) for _ in range(n)]
    return rows


def as_text(value) -> str:
    return value if isinstance(value, str) else str(value)


def seconds(time, per_second: float) -> float:
    return float(time) if per_second == 1.0 else float(time) / per_second


@SETTINGS
@given(rows=click_logs(), suffix=st.sampled_from([".csv", ".tsv", ".parquet"]))
@example(rows=[(0, 0, 1e11)], suffix=".csv")  # Unix milliseconds by their size: read as 1e8 s
@example(rows=[(0, 0, 1e11 - 1), (0, 1, 5e11), (1, 2, -7.5)], suffix=".parquet")  # the median is seconds
def test_a_click_log_loads_whole_or_fails_clearly(rows, suffix):
    frame = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"], dtype=object)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clicks{suffix}"
        if suffix == ".parquet":
            if any(isinstance(v, int) and v >= 2**63 for v in frame.SessionId.tolist() + frame.ItemId.tolist()):
                return  # Parquet has no integer type past int64; such a file cannot be written
            frame.astype({"Time": float}).to_parquet(path)
        else:
            frame.to_csv(path, sep="," if suffix == ".csv" else "\t", index=False)
        bad_time = not all(math.isfinite(t) for _, _, t in rows)
        try:
            events = read_events(path, "data.train")
        except DataFileError as error:
            assert "data.train" in str(error) and str(path) in str(error)
            assert bad_time and "'Time'" in str(error)
            return
    assert not bad_time, "a non-finite time was accepted"
    # data.time_unit=auto: Unix seconds below a median of 1e11, milliseconds below 1e14 (the times here reach 1e12).
    per_second = 1.0 if np.median([abs(float(t)) for _, _, t in rows]) < 1e11 else 1e3
    assert events.attrs["time_unit"] == {1.0: "s", 1e3: "ms"}[per_second]
    # No row lost, none changed: the same (session, item, time) rows, ids as written, times in seconds.
    got = sorted((as_text(s), as_text(i), t) for s, i, t in events[[SESSION, ITEM, TIME]].itertuples(index=False))
    assert got == sorted((as_text(s), as_text(i), seconds(t, per_second)) for s, i, t in rows)
    # Sorted by session, then time; ties keep file order.
    for _, session in events.groupby(SESSION, sort=False):
        assert session[TIME].is_monotonic_increasing
    written = pd.DataFrame(
        [(as_text(s), as_text(i), seconds(t, per_second)) for s, i, t in rows], columns=[SESSION, ITEM, TIME]
    )
    for (session, time), clicks in events.groupby([SESSION, TIME], sort=False):
        same = written[(written[SESSION] == as_text(session)) & (written[TIME] == time)]
        assert [as_text(i) for i in clicks[ITEM]] == same[ITEM].tolist()


def test_ids_that_only_look_alike_stay_distinct(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("SessionId,ItemId,Time\n01,1,0\n1,01,1\nNA,1.0,2\nNA,1,3\n")
    events = read_events(path, "data.train")
    assert sorted(events[SESSION].tolist()) == ["01", "1", "NA", "NA"]
    assert sorted(events[ITEM].tolist()) == ["01", "1", "1", "1.0"]


sessions_of_items = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=8), min_size=1, max_size=12)


@SETTINGS
@given(sessions=sessions_of_items, known=st.sets(st.integers(1, 12), min_size=1))
def test_filters_keep_exactly_the_known_clicks_of_sessions_that_keep_two(sessions, known):
    frame = pd.DataFrame(
        [(s, item, float(t)) for s, clicks in enumerate(sessions) for t, item in enumerate(clicks)],
        columns=[SESSION, ITEM, TIME],
    )
    expected = [[i for i in clicks if i in known] for clicks in sessions]
    expected = [clicks for clicks in expected if len(clicks) >= 2]
    index = ItemIndex.from_items(np.array(sorted(known)))
    if not expected:
        with pytest.raises(ValueError, match="test is empty after filtering"):
            to_sessions(frame, index, "test")
        return
    result = to_sessions(frame, index, "test")
    got = [index.ids[result.session(s) - 1].tolist() for s in range(result.n_sessions)]
    assert got == expected


@SETTINGS
@given(sessions=sessions_of_items, fraction=st.floats(0.05, 0.95))
def test_a_split_by_start_time_keeps_every_row_once_and_holds_out_the_latest(sessions, fraction):
    frame = pd.DataFrame(
        [(s, item, float(s + t / 10)) for s, clicks in enumerate(sessions) for t, item in enumerate(clicks)],
        columns=[SESSION, ITEM, TIME],
    )
    n_held = round(len(sessions) * fraction)
    if n_held in (0, len(sessions)):
        with pytest.raises(ValueError, match="leaves held-out or training empty"):
            split_by_start_time(frame, fraction, "held-out")
        return
    train, held = split_by_start_time(frame, fraction, "held-out")
    assert len(train) + len(held) == len(frame)
    assert set(held[SESSION]) == set(range(len(sessions) - n_held, len(sessions)))
    pd.testing.assert_frame_equal(pd.concat([train, held], ignore_index=True), frame)


TIES = ["pessimistic", "optimistic", "mean"]


def reference_clean(sessions, dedup, min_length, min_support, iterate):
    """The published cleaning steps, written plainly on lists of item lists."""
    if dedup:
        sessions = [[x for j, x in enumerate(s) if j == 0 or s[j - 1] != x] for s in sessions]
    sessions = [s for s in sessions if len(s) >= min_length]
    while True:
        before = sum(map(len, sessions))
        support = Counter(x for s in sessions for x in s)
        sessions = [[x for x in s if support[x] >= min_support] for s in sessions]
        sessions = [s for s in sessions if len(s) >= min_length]
        if not iterate or sum(map(len, sessions)) == before:
            return sessions


@SETTINGS
@given(
    sessions=st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=7), min_size=1, max_size=15),
    dedup=st.booleans(),
    min_support=st.integers(1, 4),
    iterate=st.booleans(),
)
def test_prepare_filters_remove_exactly_what_the_protocol_says(sessions, dedup, min_support, iterate):
    rows = [(s, item, float(t)) for s, clicks in enumerate(sessions) for t, item in enumerate(clicks)]
    session, item, time = zip(*rows, strict=True)
    events = encode(np.array(session), pa.chunked_array([pa.array(item)]), np.array(time))
    expected = reference_clean(sessions, dedup, 2, min_support, iterate)
    if not expected:
        with pytest.raises(PrepareError, match="nothing is left after"):
            clean(events, "consecutive" if dedup else "none", 2, min_support, iterate)
        return
    cleaned, steps = clean(events, "consecutive" if dedup else "none", 2, min_support, iterate)
    items = cleaned.item_ids.to_numpy(zero_copy_only=False)[cleaned.item]
    got = [items[start : start + n].tolist() for start, n in zip(cleaned.starts, cleaned.lengths, strict=True)]
    assert got == expected
    assert steps[0].events == len(rows) and steps[-1].events == sum(map(len, expected))


score_rows = st.lists(st.integers(0, 4), min_size=2, max_size=9)  # few values: many ties


@SETTINGS
@given(
    rows=st.lists(score_rows, min_size=1, max_size=6),
    data=st.data(),
    ties=st.sampled_from(["pessimistic", "optimistic", "mean"]),
)
def test_ranks_and_metrics_follow_their_definitions(rows, data, ties):
    width = min(len(r) for r in rows)
    scores = torch.tensor([r[:width] for r in rows], dtype=torch.float32)
    targets = torch.tensor([data.draw(st.integers(0, width - 1)) for _ in rows])
    ranks = target_ranks(scores, targets, ties)
    for row, target, rank in zip(scores.tolist(), targets.tolist(), ranks.tolist(), strict=True):
        above = sum(s > row[target] for s in row)
        tied = sum(s == row[target] for s in row)  # the target included
        assert rank == {"pessimistic": above + tied, "optimistic": above + 1, "mean": above + (tied + 1) / 2}[ties]

    # Metrics at k, accumulated over any split of the predictions, equal their formulas on all of them.
    k = data.draw(st.integers(1, width))
    top = scores.topk(k, dim=1).indices
    cut = data.draw(st.integers(0, len(rows)))
    metrics = ranking_metrics([k], "", sync=False)
    metrics.update(ranks[:cut], top[:cut])
    metrics.update(ranks[cut:], top[cut:])
    values = {name: float(v) for name, v in metrics.compute().items()}
    ranks = ranks.tolist()
    assert values[f"recall@{k}"] == pytest.approx(np.mean([r <= k for r in ranks]))
    assert values[f"mrr@{k}"] == pytest.approx(np.mean([1 / r if r <= k else 0 for r in ranks]))
    assert values[f"ndcg@{k}"] == pytest.approx(np.mean([1 / math.log2(r + 1) if r <= k else 0 for r in ranks]))
    assert values["n_predictions"] == len(rows)
