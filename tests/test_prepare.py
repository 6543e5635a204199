"""prepare_data: each recipe on a hand-written raw file in its real format, the stats, bad input, atomic output,
the loading of prepared files, and training on them with data=files."""

import gzip
import io
import json
import logging
import shlex
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import TINY, compose_config, run_script
from lstm_rec.data.io import iso_seconds, read_events
from lstm_rec.data.sessions import sort_events
from lstm_rec.data.synthetic import generate_events
from lstm_rec.jobs.train import train
from lstm_rec.prepare import PrepareError, prepare_data
from lstm_rec.prepare.benchmark import write_clicks
from lstm_rec.prepare.generic import GenericLog

# yoochoose-clicks.dat rows. Items: A 214536500, B 214536502, C 214536506, D 214577561, E 214662742,
# F 214718203, G 214820000. Session 3 (D) is too short; D and E have fewer than 5 clicks; F is clicked
# only in the last day (sessions 8-10); session 2 repeats A; session 7 ends exactly one day before the end.
CLICKS = """\
1,2014-04-01T10:00:00.277Z,214536500,0
1,2014-04-01T10:01:00.000Z,214536502,0
1,2014-04-01T10:02:00.000Z,214536506,0
1,2014-04-01T10:03:00.000Z,214820000,0
2,2014-04-01T11:00:00.000Z,214536500,0
2,2014-04-01T11:00:30.000Z,214536500,0
2,2014-04-01T11:01:00.000Z,214536502,0
2,2014-04-01T11:02:00.000Z,214820000,0
3,2014-04-01T12:00:00.000Z,214577561,S
4,2014-04-02T09:02:00.000Z,214536502,0
4,2014-04-02T09:03:00.000Z,214536506,0
4,2014-04-02T09:04:00.000Z,214577561,0
5,2014-04-02T10:00:00.000Z,214662742,0
5,2014-04-02T10:01:00.000Z,214820000,0
6,2014-04-03T09:00:00.000Z,214536500,0
6,2014-04-03T09:01:00.000Z,214536502,0
6,2014-04-03T09:02:00.000Z,214536506,0
6,2014-04-03T09:03:00.000Z,214820000,0
7,2014-04-03T11:00:00.000Z,214536506,0
7,2014-04-03T11:01:00.000Z,214820000,0
7,2014-04-03T11:02:00.000Z,214536500,0
8,2014-04-04T09:00:00.000Z,214536500,0
8,2014-04-04T09:01:00.000Z,214718203,0
8,2014-04-04T09:02:00.000Z,214536502,0
8,2014-04-04T09:03:00.000Z,214536506,0
9,2014-04-04T10:00:00.000Z,214718203,0
9,2014-04-04T10:01:00.000Z,214536506,0
9,2014-04-04T10:02:00.000Z,214662742,0
10,2014-04-04T11:00:00.000Z,214718203,0
10,2014-04-04T11:01:00.000Z,214718203,0
10,2014-04-04T11:02:00.000Z,214718203,0
"""
A, B, C, G = 214536500, 214536502, 214536506, 214820000


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def run(tmp_path: Path, dataset: str, raw: Path | str, *overrides: str) -> tuple[Path, dict]:
    """prepare_data as the script runs it, into tmp_path/out."""
    out = tmp_path / "out"
    cfg = compose_config(
        "prepare_data", [f"dataset={dataset}", f"input={raw}", f"output={out}", *overrides], tmp_path / "hydra"
    )
    return out, prepare_data(cfg)


def sessions(path: Path) -> dict:
    """A split file as {SessionId: [ItemId, ...]} in row order (rows must be grouped by session)."""
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t")
    assert frame.columns.tolist() == ["SessionId", "ItemId", "Time"]
    assert frame.equals(frame.sort_values(["SessionId", "Time"], kind="stable", ignore_index=True))
    return {s: group.tolist() for s, group in frame.groupby("SessionId", sort=False)["ItemId"]}


def assert_splits(out: Path, expected: dict, suffix: str = ".parquet") -> None:
    for name, want in expected.items():
        assert sessions(out / f"{name}{suffix}") == want, name


def unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_yoochoose_rsc15_protocol_by_hand(tmp_path):
    out, stats = run(tmp_path, "yoochoose", write(tmp_path / "yoochoose-clicks.dat", CLICKS))
    # One pass: session 3 (too short), then D and E (1 and 2 clicks), then session 5 (only G left).
    # G keeps its 4 clicks: RSC15 filters once. The last click is 04-04 11:02, so the test cut is
    # 04-03 11:02: session 7 ends right on it. F is unseen in training: session 9 keeps only C, 10 nothing.
    assert_splits(
        out,
        {
            "train_full": {1: [A, B, C, G], 2: [A, A, B, G], 4: [B, C], 6: [A, B, C, G]},
            "test": {7: [C, G, A], 8: [A, B, C]},
            "train_tr": {1: [A, B, C, G], 2: [A, A, B, G]},
            "train_valid": {4: [B, C], 6: [A, B, C, G]},  # train_full ends 04-03 09:03; session 4 ends 04-02 09:03
        },
    )
    first = pd.read_parquet(out / "train_full.parquet").iloc[0]
    assert first["Time"] == pytest.approx(unix("2014-04-01T10:00:00.277"), abs=1e-6)  # UTC, milliseconds kept
    assert [(s["name"], s["events"], s["sessions"], s["items"]) for s in stats["filtering"]] == [
        ("input", 31, 10, 7),
        ("sessions shorter than 2", 30, 9, 7),
        ("items with fewer than 5 clicks", 27, 9, 5),
        ("sessions shorter than 2", 26, 8, 5),
    ]


def test_several_input_files_are_one_log(tmp_path):
    lines = CLICKS.splitlines(keepends=True)
    first, second = write(tmp_path / "a.dat", "".join(lines[:12])), write(tmp_path / "b.dat", "".join(lines[12:]))
    out, _ = run(tmp_path, "yoochoose", f"[{first},{second}]")
    expected, _ = run(tmp_path / "one", "yoochoose", write(tmp_path / "clicks.dat", CLICKS))
    for name in ("train_full", "test", "train_tr", "train_valid"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / f"{name}.parquet"), pd.read_parquet(expected / f"{name}.parquet")
        )


def test_yoochoose_dedup_protocol_by_hand(tmp_path):
    out, stats = run(tmp_path, "yoochoose_dedup", write(tmp_path / "yoochoose-clicks.dat", CLICKS))
    # Repeats go first (session 2: A A -> A; session 10: F F F -> F). Sessions 3 and 10 are too short;
    # pass 1 drops D, E, F, then sessions 5 and 9; G is left with 4 clicks, so pass 2 drops G.
    # Last click 04-04 09:03: test = sessions starting from 04-03 09:03. Validation cut one day earlier,
    # 04-02 09:03: session 4 started before it and loses its click at 09:03, leaving it too short.
    assert_splits(
        out,
        {
            "train_full": {1: [A, B, C], 2: [A, B], 4: [B, C], 6: [A, B, C]},
            "test": {7: [C, A], 8: [A, B, C]},
            "train_tr": {1: [A, B, C], 2: [A, B]},
            "train_valid": {6: [A, B, C]},
        },
    )
    steps = {s["name"]: s["events"] for s in stats["filtering"]}
    assert steps["repeated clicks"] == 28
    assert steps["items with fewer than 5 clicks (pass 2)"] == 15  # G's 4 clicks
    assert steps["items with fewer than 5 clicks (pass 3)"] == 15  # stable


DIGINETICA = """\
sessionId;userId;itemId;timeframe;eventdate
1;NA;1;20000;2016-01-01
1;NA;2;5000;2016-01-01
1;NA;3;60000;2016-01-01
2;7;1;0;2016-01-02
2;7;2;1500;2016-01-02
3;;4;0;2016-01-03
4;NA;3;0;2016-01-05
4;NA;4;1000;2016-01-05
4;NA;1;2000;2016-01-05
5;NA;2;0;2016-01-10
5;NA;3;3000;2016-01-10
6;NA;4;0;2016-01-12
6;NA;2;100;2016-01-12
7;NA;1;0;2016-01-14
7;NA;3;500;2016-01-14
8;NA;1;0;2016-01-16
8;NA;2;2000;2016-01-16
9;NA;3;0;2016-01-20
9;NA;2;1000;2016-01-20
"""


def test_diginetica_by_hand(tmp_path):
    out, _ = run(tmp_path, "diginetica", write(tmp_path / "train-item-views.csv", DIGINETICA))
    # Session 1 is ordered by timeframe (2, 1, 3). Session 3 is too short; item 4 then has 2 views and goes,
    # which leaves session 6 too short. Last view 01-20 00:00:01: test = sessions ending from 01-13 00:00:01;
    # train_full ends 01-10 00:00:03, so validation holds the sessions ending from 01-03 00:00:03.
    assert_splits(
        out,
        {
            "train_full": {1: [2, 1, 3], 2: [1, 2], 4: [3, 1], 5: [2, 3]},
            "test": {7: [1, 3], 8: [1, 2], 9: [3, 2]},
            "train_tr": {1: [2, 1, 3], 2: [1, 2]},
            "train_valid": {4: [3, 1], 5: [2, 3]},
        },
    )
    times = pd.read_parquet(out / "train_full.parquet")["Time"].tolist()
    assert times[:3] == [unix("2016-01-01T00:00:05"), unix("2016-01-01T00:00:20"), unix("2016-01-01T00:01:00")]


# RetailRocket events.csv, not in time order. Visitor 1's add-to-cart at 00:35 joins its views at 00:10 and
# 01:00 into one session; visitor 2's two views are 40 minutes apart (two sessions of one view); visitor 6's
# views are exactly 30 minutes apart (one session); item 40 has 2 views.
RETAILROCKET = """\
timestamp,visitorid,event,itemid,transactionid
1433116800000,1,view,10,
1433118900000,1,addtocart,20,
1433117400000,1,view,20,
1433120400000,1,view,30,
1433124000000,2,view,10,
1433126400000,2,view,20,
1433239200000,3,view,20,
1433239560000,3,transaction,30,99
1433239500000,3,view,30,
1433239620000,3,view,40,
1433322000000,1,view,10,
1433323200000,1,view,30,
1433404800000,4,view,20,
1433404860000,4,view,10,
1433505600000,5,view,30,
1433506200000,5,view,20,
1433506800000,5,view,10,
1433595600000,6,view,10,
1433597400000,6,view,30,
1433620800000,4,view,20,
1433621700000,4,view,40,
"""


def test_retailrocket_by_hand(tmp_path):
    out, _ = run(tmp_path, "retailrocket", write(tmp_path / "events.csv", RETAILROCKET))
    # Sessions are numbered by visitor, then time: 1 (v1, 06-01), 2 (v1, 06-03), 3 and 4 (v2), 5 (v3),
    # 6 and 7 (v4), 8 (v5), 9 (v6). Last view 06-06 13:30: test = sessions ending from 06-04 13:30;
    # train_full ends 06-04 08:01, so validation holds the sessions ending from 06-02 08:01.
    assert_splits(
        out,
        {
            "train_full": {1: [10, 20, 30], 2: [10, 30], 5: [20, 30], 6: [20, 10]},
            "test": {8: [30, 20, 10], 9: [10, 30]},
            "train_tr": {1: [10, 20, 30]},
            "train_valid": {2: [10, 30], 5: [20, 30], 6: [20, 10]},
        },
    )
    assert pd.read_parquet(out / "test.parquet")["Time"].iloc[0] == 1433505600.0


# MovieLens ratings (user, item, stars, Unix seconds), not in time order; D = 2000-01-01 00:00 UTC. User 1's third
# rating lies exactly an hour after the second (one session), the fourth 80 minutes later (a session of one rating);
# user 4 rated items 40 and 10 in one second (the file's order stays).
D = 946_684_800
RATINGS = [
    (1, 10, 4, D),
    (1, 20, 3, D + 600),
    (1, 30, 5, D + 4200),
    (1, 40, 1, D + 9000),
    (2, 20, 2, D + 2 * 86400),
    (2, 10, 4, D + 2 * 86400 + 60),
    (3, 30, 5, D + 5 * 86400 + 120),
    (3, 10, 3, D + 5 * 86400),
    (4, 40, 4, D + 3 * 86400),
    (4, 10, 2, D + 3 * 86400),
    (1, 20, 4, D + 5 * 86400 + 30),
    (1, 30, 3, D + 5 * 86400 + 90),
]
MOVIELENS_LAYOUTS = {
    "u.data": "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS),
    "ratings.dat": "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS),
    "ratings.csv": "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in RATINGS),
}


@pytest.mark.parametrize("name", list(MOVIELENS_LAYOUTS))
def test_movielens_by_hand_in_each_layout(tmp_path, name):
    raw = write(tmp_path / name, MOVIELENS_LAYOUTS[name])
    days = ["dataset.protocol.min_item_support=1", "dataset.protocol.test_days=1", "dataset.protocol.valid_days=1"]
    out, _ = run(tmp_path, "movielens", raw, *days)
    # Sessions by user, then time: 1 (u1, day 0), 2 (u1's lone item 40, too short), 3 (u1, day 5), 4 (u2), 5 (u3),
    # 6 (u4). Last rating day 5 00:02: test = sessions ending after day 4 00:02; train_full ends day 3 (session 6),
    # so validation holds the sessions ending after day 2 00:00, less item 40, unseen in train_tr (6 is then too short).
    assert_splits(
        out,
        {
            "train_full": {1: [10, 20, 30], 4: [20, 10], 6: [40, 10]},
            "test": {3: [20, 30], 5: [10, 30]},
            "train_tr": {1: [10, 20, 30]},
            "train_valid": {4: [20, 10]},
        },
    )
    assert pd.read_parquet(out / "test.parquet")["Time"].tolist() == [D + 5 * 86400 + s for s in (30, 90, 0, 120)]


GENERIC = """\
user,item,ts
u1,a,2020-01-01T10:00:00
u1,a,2020-01-01T10:01:00
u1,b,2020-01-01T10:02:00
u1,b,2020-01-01T10:30:00
u1,a,2020-01-01T10:31:00
u2,b,2020-01-02T09:00:00
u2,c,2020-01-02T09:05:00
u2,d,2020-01-02T09:06:00
u3,a,2020-01-03T09:00:00
u3,b,2020-01-03T09:01:00
u3,c,2020-01-03T09:02:00
"""
GAP_SESSIONS = [
    "dataset.reader.session_col=null",
    "dataset.reader.user_col=user",
    "dataset.reader.session_gap=600",
    "dataset.reader.item_col=item",
    "dataset.reader.time_col=ts",
    "dataset.protocol.min_item_support=2",
    "dataset.protocol.dedup=consecutive",
    "dataset.protocol.iterate_until_stable=true",
    "dataset.protocol.valid_days=0.01",
]


def test_generic_gzipped_csv_with_gap_sessions_to_tsv(tmp_path):
    raw = write(tmp_path / "clicks.csv.gz", GENERIC)
    out, _ = run(tmp_path, "generic", raw, *GAP_SESSIONS, "output_format=tsv")
    # u1's clicks split at the 28-minute pause: sessions 1 (a a b -> a b) and 2 (b a); u2 is 3, u3 is 4.
    # d has one click; c is unseen before the test cut, so test session 3 keeps only b and goes.
    assert_splits(
        out,
        {
            "train_full": {1: ["a", "b"], 2: ["b", "a"]},
            "test": {4: ["a", "b"]},
            "train_tr": {1: ["a", "b"]},
            "train_valid": {2: ["b", "a"]},
        },
        suffix=".tsv",
    )
    assert (out / "test.tsv").read_text().splitlines()[:2] == ["SessionId\tItemId\tTime", "4\ta\t1578042000"]


# ISO-8601 forms that Arrow's first cast (milliseconds) does not read, and the shift each adds to GENERIC's times.
ISO_FORMS = {
    "microseconds": (lambda t: t + ".123456", 0.123456),
    "nanoseconds": (lambda t: t + ".123456789", 0.123456789),
    "an offset": (lambda t: t + "+02:00", -7200.0),
    "the basic format": (lambda t: t.replace("-", "").replace(":", ""), 0.0),
}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("form", ISO_FORMS)
def test_generic_iso_text_in_any_form_is_read_as_data_files_reads_it(tmp_path, form, suffix):
    rewrite, shift = ISO_FORMS[form]
    frame = pd.read_csv(io.StringIO(GENERIC), dtype=str)
    frame["ts"] = frame["ts"].map(rewrite)
    raw = tmp_path / f"clicks{suffix}"
    frame.to_parquet(raw) if suffix == ".parquet" else frame.to_csv(raw, index=False)
    out, _ = run(tmp_path, "generic", raw, *GAP_SESSIONS)
    # The same sessions and splits as the plain text (the shift moves every click alike), at the written times:
    # seconds as data=files reads the same text.
    assert sessions(out / "test.parquet") == {4: ["a", "b"]}
    assert sessions(out / "train_full.parquet") == {1: ["a", "b"], 2: ["b", "a"]}
    times = pd.read_parquet(out / "test.parquet")["Time"].tolist()
    assert times == pytest.approx([unix("2020-01-03T09:00:00") + shift, unix("2020-01-03T09:01:00") + shift], abs=1e-6)
    assert times == pytest.approx(iso_seconds(frame["ts"].iloc[[8, 9]]).tolist(), abs=1e-6)


def test_generic_parquet_date_column_is_midnight_utc(tmp_path):
    frame = pd.read_csv(io.StringIO(GENERIC), dtype=str)
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.date  # a date32 column in Parquet
    frame.to_parquet(tmp_path / "clicks.parquet")
    events = GenericLog(session_col="user", item_col="item", time_col="ts").read([tmp_path / "clicks.parquet"])
    days = [unix(f"2020-01-0{day}T00:00:00") for day in (1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3)]  # u1, u2, u3's rows
    assert events.time.tolist() == days


def test_generic_iso_text_names_the_first_row_that_is_no_date_time(tmp_path):
    frame = pd.read_csv(io.StringIO(GENERIC), dtype=str)
    frame["ts"] = frame["ts"] + ".123456"  # past Arrow's casts, so the pandas reading finds the row
    frame.loc[6, "ts"] = "2020-01-02 at 09:05"
    frame.to_parquet(tmp_path / "clicks.parquet")
    with pytest.raises(PrepareError, match=r"clicks.parquet, row 7: column 'ts' is '2020-01-02 at 09:05'; expected a "):
        run(tmp_path, "generic", tmp_path / "clicks.parquet", *GAP_SESSIONS)


@pytest.mark.parametrize("unit", ["ms", "auto"])
def test_generic_parquet_with_millisecond_times_matches_the_yoochoose_recipe(tmp_path, caplog, unit):
    rows = [line.split(",") for line in CLICKS.splitlines()]
    frame = pd.DataFrame(
        {
            "SessionId": [int(r[0]) for r in rows],
            "ItemId": [int(r[2]) for r in rows],
            "Time": [round(unix(r[1][:-1]) * 1000) for r in rows],
        }
    )
    frame.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "clicks.parquet")  # any row order
    with caplog.at_level(logging.INFO):
        out, _ = run(tmp_path, "generic", tmp_path / "clicks.parquet", f"dataset.reader.time_unit={unit}")
    # auto (the default) tells the milliseconds by their size, and says so; ms named is not guessed.
    assert ("read as ms (dataset.reader.time_unit=auto" in caplog.text) == (unit == "auto")
    expected, _ = run(tmp_path / "recipe", "yoochoose", write(tmp_path / "yoochoose-clicks.dat", CLICKS))
    for name in ("train_full", "test", "train_tr", "train_valid"):
        got, want = pd.read_parquet(out / f"{name}.parquet"), pd.read_parquet(expected / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, want)


def test_stats_json_and_markdown(tmp_path):
    out, result = run(tmp_path, "yoochoose", write(tmp_path / "yoochoose-clicks.dat", CLICKS))
    stats = json.loads((out / "stats.json").read_text())
    assert stats == {k: v for k, v in result.items() if k != "files"}
    assert stats["recipe"] == "yoochoose" and stats["protocol"]["test_days"] == 1
    train_full, test = stats["splits"]["train_full"], stats["splits"]["test"]
    assert [train_full[key] for key in ("events", "sessions", "items", "predictions")] == [14, 4, 4, 10]
    assert train_full["length"] == {"min": 2, "median": 4.0, "mean": 3.5, "p90": 4.0, "max": 4}
    assert train_full["length_histogram"] == {"1": 0, "2": 1, "3": 0, "4": 3, "5": 0} | dict.fromkeys(
        ["6-10", "11-20", "21-50", ">50"], 0
    )
    assert (train_full["first"], train_full["last"]) == ("2014-04-01 10:00:00", "2014-04-03 09:03:00")
    assert (test["events"], test["sessions"], test["predictions"]) == (6, 2, 4)
    markdown = (out / "stats.md").read_text()
    assert "| train_full | 14 | 4 | 4 | 10 | 1.96 | 2014-04-01 10:00:00 | 2014-04-03 09:03:00 | 3.5 |" in markdown
    assert "| test | 0 | 0 | 2 | 0 | 0 | 0 | 0 | 0 | 0 | 3.0 | 3.0 | 3 |" in markdown
    assert "| items with fewer than 5 clicks | 27 | 9 | 5 |" in markdown


def _clicks_with(line: int, text: str) -> str:
    lines = CLICKS.splitlines()
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


BAD_INPUT = [
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        "SessionId,Time,ItemId,Category\n" + CLICKS,
        [],
        r"line 1 looks like a header \('SessionId,Time,ItemId,Category'\); yoochoose-clicks.dat has none",
    ),
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        _clicks_with(3, "1,2014-04-01 10:02:00,214536506,0"),
        [],
        r"yoochoose-clicks.dat, line 3: field 2 \(timestamp\) is '2014-04-01 10:02:00'; expected an ISO-8601 UTC time",
    ),
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        _clicks_with(7, "2,2014-04-01T11:01:00.000Z,B12,0"),
        [],
        r"line 7: field 3 \(item id\) is 'B12'; expected an integer id",
    ),
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        _clicks_with(4, "1,2014-04-01T10:03:00.000Z,214820000"),
        [],
        r"line 4: 3 fields separated by ',' where 4 are expected",
    ),
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        _clicks_with(5, "2,2014-04-01T11:00:00.000Z,,0"),
        [],
        r"line 5: field 3 \(item id\) is empty",
    ),
    (
        "yoochoose",
        "yoochoose-buys.dat",
        "420374,2014-04-06T18:44:58.314Z,214537888,12462,1\n",
        [],
        r"line 1 has 5 comma-separated fields where 4 are expected",
    ),
    ("yoochoose", "empty.dat", "", [], r"input: '.*empty.dat' is empty \(0 bytes\); expected yoochoose-clicks.dat of"),
    (
        "diginetica",
        "train-item-views.csv",
        DIGINETICA.replace(";timeframe", "").replace(";20000", ""),
        [],
        r"line 1 has no column \['timeframe'\]",
    ),
    ("diginetica", "views.csv", DIGINETICA.split("\n", 1)[1], [], r"line 1 holds data .*; expected the header"),
    ("diginetica", "views.csv", DIGINETICA.split("\n", 1)[0] + "\n", [], r"views.csv: no clicks, only a header"),
    (
        "diginetica",
        "views.csv",
        DIGINETICA.replace("2;7;2;1500;2016-01-02", "2;7;2;1500;02/01/2016"),
        [],
        r"line 6: column 'eventdate' is '02/01/2016'; expected a date like 2016-05-09",
    ),
    ("retailrocket", "events.csv", RETAILROCKET, ["dataset.reader.keep_events=[click]"], r"no event of type \['click"),
    ("movielens", "ratings.csv", "user,item,rating,ts\n1,2,3,4\n", [], r"line 1 is 'user,item,rating,ts'; expected a"),
    ("movielens", "ratings.csv", "userId,movieId,rating,timestamp\n", [], r"ratings.csv: no clicks, only a header"),
    (
        "movielens",
        "u.data",
        MOVIELENS_LAYOUTS["u.data"],
        ["dataset.reader.session_gap=0"],
        r"session_gap must be a positive number of seconds, got 0",
    ),
    (
        "retailrocket",
        "events.csv",
        RETAILROCKET,
        ["dataset.reader.session_gap=-60"],
        r"session_gap must be a positive number of seconds, got -60",
    ),
    (
        "movielens",
        "u.data",
        MOVIELENS_LAYOUTS["u.data"].replace(f"{D + 600}", "2000-01-01"),
        [],
        r"u.data, line 2: field 4 \(timestamp\) is '2000-01-01'; expected Unix seconds, an integer",
    ),
    (  # ratings.dat is read at every ":", with empty fields between: its errors count the fields of "::" alone
        "movielens",
        "ratings.dat",
        MOVIELENS_LAYOUTS["ratings.dat"].replace(f"{D + 600}", "2000-01-01"),
        [],
        r"ratings.dat, line 2: field 4 \(timestamp\) is '2000-01-01'; expected Unix seconds, an integer",
    ),
    (
        "generic",
        "clicks.csv",
        GENERIC.replace("2020-01-02T09:05:00", "02/01/2020 09:05"),
        [*GAP_SESSIONS, "dataset.reader.time_format=%Y-%m-%dT%H:%M:%S"],
        r"clicks.csv, line 8: column 'ts' is '02/01/2020 09:05'; expected a time in the format",
    ),
    ("generic", "clicks.csv", GENERIC, [], r"line 1 has no column \['SessionId', 'ItemId', 'Time'\]"),
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        CLICKS,
        ["dataset.protocol.min_item_support=100"],
        r"nothing is left after 'items with fewer than 100 clicks': it removed the last 30 events",
    ),
    (
        "yoochoose",
        "yoochoose-clicks.dat",
        "1,2014-04-01T10:00:00.000Z,1,0\n1,2014-04-01T10:01:00.000Z,2,0\n"
        "2,2014-04-03T10:00:00.000Z,3,0\n2,2014-04-03T10:01:00.000Z,4,0\n",
        ["dataset.protocol.min_item_support=1"],
        r"test is empty once clicks on items unseen in its training part and sessions shorter than 2 are dropped",
    ),
    ("yoochoose", "yoochoose-clicks.dat", CLICKS, ["dataset.protocol.test_days=30"], r"train_full is empty after"),
    ("yoochoose", "yoochoose-clicks.dat", CLICKS, ["dataset.protocol.dedup=all"], r"dataset.protocol.dedup must be"),
    ("yoochoose", "yoochoose-clicks.dat", CLICKS, ["output_format=csv"], r"output_format must be one of"),
    ("generic", "x.csv", GENERIC, ["dataset.reader.session_col=null"], r"or session_col=null with user_col and"),
]


@pytest.mark.parametrize(
    ("dataset", "name", "text", "overrides", "message"), BAD_INPUT, ids=[case[-1][:40] for case in BAD_INPUT]
)
def test_bad_input_names_the_file_line_and_expectation_and_leaves_nothing(
    tmp_path, dataset, name, text, overrides, message
):
    raw = write(tmp_path / name, text)
    with pytest.raises(Exception, match=message) as error:
        run(tmp_path, dataset, raw, *overrides)
    assert isinstance(error.value, PrepareError) or isinstance(error.value.__cause__, PrepareError)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no output, no temporary folder


def test_missing_input_file_says_what_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input: no file at '.*nope.dat'; set input=PATH"):
        run(tmp_path, "yoochoose", tmp_path / "nope.dat")


def test_parquet_without_the_mapped_columns(tmp_path):
    pd.DataFrame({"session": [1], "item": [2], "ts": [3.0]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(PrepareError, match=r"x.parquet has no column \['SessionId', 'ItemId', 'Time'\] \(columns"):
        run(tmp_path, "generic", tmp_path / "x.parquet")


def test_a_failure_while_writing_leaves_no_partial_output(tmp_path, monkeypatch):
    import lstm_rec.prepare.writer as writer

    written = []

    def fail_on_the_second(table, path):
        if written:
            raise OSError("disk full")
        written.append(path)
        path.write_text("partial")

    monkeypatch.setattr(writer, "_write_table", fail_on_the_second)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, "yoochoose", write(tmp_path / "clicks.dat", CLICKS))
    assert written and not written[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.dat"]  # no output, no temporary folder


def test_existing_output_needs_overwrite_which_replaces_only_earlier_outputs(tmp_path):
    raw = write(tmp_path / "clicks.dat", CLICKS)
    out, _ = run(tmp_path, "yoochoose", raw, "output_format=tsv")
    with pytest.raises(PrepareError, match=r"out' exists; choose a new output=DIR, or set overwrite=true"):
        run(tmp_path, "yoochoose", raw)
    run(tmp_path, "yoochoose", raw, "overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["stats.json", "stats.md", "test.parquet", "train_full.parquet", "train_tr.parquet", "train_valid.parquet"]
    )
    (out / "stats.json").unlink()
    with pytest.raises(PrepareError, match=r"exists and is not a prepare_data output \(no stats.json\)"):
        run(tmp_path, "yoochoose", raw, "overwrite=true")


def test_reading_prepared_parquet_skips_the_sort_and_still_sorts_other_files(tmp_path):
    events = generate_events(n_sessions=500, n_items=50, seed=1)
    events.columns = ["SessionId", "ItemId", "Time"]
    events.to_parquet(tmp_path / "sorted.parquet")
    events.sample(frac=1.0, random_state=1).to_parquet(tmp_path / "shuffled.parquet")
    sorted_read = read_events(tmp_path / "sorted.parquet", "data.train")
    shuffled_read = read_events(tmp_path / "shuffled.parquet", "data.train")
    pd.testing.assert_frame_equal(sorted_read, shuffled_read)
    pd.testing.assert_frame_equal(sorted_read, sort_events(sorted_read.sample(frac=1.0, random_state=2)))


def _structured_raw_clicks(path: Path) -> None:
    """generate_events' sessions (a sequence an LSTM can learn) as yoochoose-clicks.dat over about ten days."""
    events = generate_events(n_sessions=3000, n_items=200, seed=7)
    millis = ((1.396e9 + (events["time"] - events["time"].min()) * 5) * 1000).astype(np.int64)
    stamps = np.datetime_as_string(millis.to_numpy().astype("datetime64[ms]"), unit="ms", timezone="UTC")
    lines = [f"{s},{t},{214_000_000 + i},0" for s, t, i in zip(events["session"], stamps, events["item"], strict=True)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_prepare_script_then_train_with_the_printed_command(tmp_path):
    raw = tmp_path / "yoochoose-clicks.dat"
    _structured_raw_clicks(raw)
    out = tmp_path / "prepared"
    result = run_script("scripts/prepare_data.py", f"input={raw}", f"output={out}", f"hydra.run.dir={tmp_path}/h")
    assert "| split | events | sessions | items |" in result.stdout
    command = next(line for line in result.stdout.splitlines() if line.startswith("python scripts/train.py"))
    overrides = [o for o in TINY if not o.startswith("data.")] + shlex.split(command)[2:]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    stats = json.loads((out / "stats.json").read_text())
    assert metrics["test/n_predictions"] == stats["splits"]["test"]["predictions"] > 500
    assert metrics["test/recall@20"] > 1.5 * metrics["pop/test/recall@20"]  # 0.65 against 0.34


def test_the_benchmark_generator_writes_the_raw_format(tmp_path):
    n = write_clicks(tmp_path / "clicks.dat", 5000, seed=1, n_items=300)
    lines = (tmp_path / "clicks.dat").read_text().splitlines()
    assert len(lines) == n >= 5000
    session, stamp, item, category = lines[0].split(",")
    assert session == "1" and stamp.startswith("2014-04-") and stamp.endswith("Z") and len(stamp) == 24
    assert int(item) >= 214_500_000 and category in {"0", "S"}


def test_generic_text_ids_stay_as_written_and_become_integers_only_when_all_are(tmp_path):
    reader = GenericLog()
    mixed = write(tmp_path / "mixed.csv", "SessionId,ItemId,Time\n1,01,0\n1,1,1\n2,NA,2\n2,1,3\n")
    events = reader.read([mixed])
    assert sorted(events.item_ids.to_pylist()) == ["01", "1", "NA"]  # three items, not one
    integers = write(tmp_path / "integers.csv", "SessionId,ItemId,Time\n1,10,0\n1,-3,1\n2,10,2\n")
    events = reader.read([integers])
    assert events.item_ids.type == pa.int64() and sorted(events.item_ids.to_pylist()) == [-3, 10]
    empty = write(tmp_path / "empty.csv", "SessionId,ItemId,Time\n1,10,0\n1,,1\n")
    with pytest.raises(PrepareError, match=r"empty.csv, line 3: column 'ItemId' is empty"):
        reader.read([empty])


def test_generic_time_unit_must_be_a_known_unit_or_auto():
    from lstm_rec.prepare.generic import GenericLog

    units = r"\['auto', 's', 'ms', 'us', 'ns', 'min', 'h', 'd'\] \(the unit of numeric times\), got 'minutes'"
    with pytest.raises(PrepareError, match=r"dataset\.reader\.time_unit must be one of " + units):
        GenericLog(time_unit="minutes")
