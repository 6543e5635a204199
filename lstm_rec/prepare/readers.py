"""Readers of the raw files of the public session datasets; each docstring names the recipe's paper and steps."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lstm_rec.data.quality import DEFAULT_REUSE_GAP
from lstm_rec.prepare.events import DAY, Events, PrepareError, encode, report_merged, sessions_from_gaps
from lstm_rec.prepare.textfile import Column, TextLog, first_line, header_of, read_columns

log = logging.getLogger(__name__)

INTEGER = "an integer id"
# How to cut the sessions of a recipe that keeps its log's session ids as they are.
KEPT_AS_PUBLISHED = (
    "the recipe keeps them as its paper does; dataset=generic cuts a log with a header at pauses instead "
    "(dataset.reader.session_col=null dataset.reader.user_col=<session column> dataset.reader.session_gap=SECONDS)"
)


def _read_all(paths: list[Path], read_one) -> pa.Table:
    """One table from several files of one format (read one by one, so errors name their file)."""
    return pa.concat_tables([read_one(path) for path in paths])


def _source(paths: list[Path]) -> str:
    return "input " + ", ".join(f"'{path}'" for path in paths)


def _checked_gap(session_gap: float) -> float:
    """A reader's session_gap: a positive number of seconds."""
    if not session_gap > 0:
        raise PrepareError(f"dataset.reader.session_gap must be a positive number of seconds, got {session_gap}")
    return float(session_gap)


def _seconds(timestamps: pa.ChunkedArray) -> np.ndarray:
    """Float Unix seconds of a timestamp column, whatever its unit."""
    per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[timestamps.type.unit]
    return pc.cast(timestamps, pa.int64()).to_numpy() / per_second


class YoochooseClicks:
    """yoochoose-clicks.dat of the RecSys Challenge 2015: no header; session id, time, item id, category.

    Times like ``2014-04-07T10:51:09.277Z`` (UTC) become float Unix seconds with their milliseconds;
    the category is not read. Several files (``input=[yoochoose-clicks.dat,yoochoose-test.dat]``) are one log.

    Recipe ``yoochoose``: the RSC15 protocol of Hidasi, Karatzoglou, Baltrunas & Tikk, "Session-based
    recommendations with recurrent neural networks" (ICLR 2016), as the GRU4Rec preprocessing does it:
    no deduplication; one pass of (drop sessions shorter than 2, drop items with fewer than 5 clicks,
    drop sessions shorter than 2); test = the sessions whose last click lies in the last day (86,400 s)
    of the data, train_full = the others; test clicks on items absent from train_full are dropped, then
    test sessions shorter than 2; train_tr/train_valid = the same split of train_full at its own last day.
    Unlike that script (local time zone, milliseconds dropped), times here are UTC with milliseconds.

    Recipe ``yoochoose_dedup``: Hidasi & Czapp, "The effect of third party implementations on
    reproducibility" (RecSys 2023): clicks that repeat the previous item of their session are dropped
    (i,i,j -> i,j); sessions shorter than 2 and items with fewer than 5 clicks are dropped repeatedly
    until nothing changes; test = the sessions that start in the last day; train_full = the clicks
    before that cut (a session across it loses its later clicks), its sessions shorter than 2 dropped;
    train_tr/train_valid = the same split one day before the test cut. That paper reads
    yoochoose-clicks.dat and yoochoose-test.dat together. Unlike its script, times keep their
    milliseconds (it truncates them to seconds and orders equal seconds by item id), and test clicks
    on items unseen in training are dropped here rather than by the evaluation (the same predictions).
    """

    LAYOUT = (
        "yoochoose-clicks.dat of RecSys Challenge 2015: no header; comma-separated session id, "
        "time like 2014-04-07T10:51:09.277Z, item id, category"
    )
    FIELDS = ("session id", "timestamp", "item id", "category")

    def __init__(self, reuse_gap: float | None = DEFAULT_REUSE_GAP) -> None:
        self.reuse_gap = reuse_gap  # seconds: longer sessions are counted and logged (None: not counted)

    def read(self, paths: list[Path]) -> Events:
        table = _read_all(paths, self._read_one)
        events = encode(table["session id"], table["item id"], _seconds(table["timestamp"]))
        report_merged(events, _source(paths), self.reuse_gap, KEPT_AS_PUBLISHED)
        return events

    def _read_one(self, path: Path) -> pa.Table:
        line = first_line(path, self.LAYOUT)
        fields = line.split(",")
        if not fields[0].strip().isdigit():
            raise PrepareError(
                f"{path}, line 1 looks like a header ({line[:80]!r}); yoochoose-clicks.dat has none: remove "
                "that line (tail -n +2) or read a log with a header with dataset=generic"
            )
        if len(fields) != len(self.FIELDS):
            raise PrepareError(
                f"{path}, line 1 has {len(fields)} comma-separated fields where {len(self.FIELDS)} are expected "
                f"({self.LAYOUT}); yoochoose-buys.dat is not a click log"
            )
        columns = [
            Column("session id", pa.int64(), INTEGER),
            Column("timestamp", pa.timestamp("ms", tz="UTC"), "an ISO-8601 UTC time like 2014-04-07T10:51:09.277Z"),
            Column("item id", pa.int64(), INTEGER),
        ]
        return read_columns(TextLog(path, ",", self.LAYOUT, list(self.FIELDS), header=False), columns)


class DigineticaViews:
    """train-item-views.csv of CIKM Cup 2016 (DIGINETICA): a header, then sessionId;userId;itemId;timeframe;eventdate.

    Recipe ``diginetica``: the single-split preprocessing of the session-rec framework of Ludewig &
    Jannach, "Evaluation of session-based recommendation algorithms" (User Modeling and User-Adapted
    Interaction 28, 2018): the time of a view is its eventdate (midnight UTC) plus timeframe / 1000
    seconds, so clicks are ordered by eventdate, then timeframe; userId is not read; no deduplication;
    one pass of (drop sessions shorter than 2, drop items with fewer than 5 views, drop sessions shorter
    than 2); test = the sessions whose last view lies in the last 7 days; test views of items absent
    from train_full are dropped, then test sessions shorter than 2; train_tr/train_valid = the same
    7-day split of train_full. session-rec reads the date in its machine's time zone: a constant shift.
    """

    LAYOUT = "train-item-views.csv of CIKM Cup 2016: a header, then sessionId;userId;itemId;timeframe;eventdate"
    WANTED = ("sessionid", "itemid", "timeframe", "eventdate")

    def __init__(self, reuse_gap: float | None = DEFAULT_REUSE_GAP) -> None:
        self.reuse_gap = reuse_gap  # seconds: longer sessions are counted and logged (None: not counted)

    def read(self, paths: list[Path]) -> Events:
        table = _read_all(paths, self._read_one)
        days = pc.cast(table["eventdate"], pa.int32()).to_numpy().astype(np.float64)
        time = days * DAY + table["timeframe"].to_numpy() / 1000.0
        events = encode(table["sessionid"], table["itemid"], time)
        report_merged(events, _source(paths), self.reuse_gap, KEPT_AS_PUBLISHED)
        return events

    def _read_one(self, path: Path) -> pa.Table:
        line = first_line(path, self.LAYOUT)
        if line.split(";")[0].strip().isdigit():
            raise PrepareError(f"{path}, line 1 holds data ({line[:80]!r}); expected the header of {self.LAYOUT}")
        # Header names are matched ignoring case and underscores (sessionId, session_id).
        names = [name.strip().lower().replace("_", "") for name in line.split(";")]
        missing = [name for name in self.WANTED if name not in names]
        if missing:
            raise PrepareError(f"{path}: line 1 has no column {missing} (found {line[:120]!r}); expected {self.LAYOUT}")
        columns = [
            Column("sessionid", pa.int64(), INTEGER),
            Column("itemid", pa.int64(), INTEGER),
            Column("timeframe", pa.int64(), "milliseconds since the session started, an integer"),
            Column("eventdate", pa.date32(), "a date like 2016-05-09"),
        ]
        return read_columns(TextLog(path, ";", self.LAYOUT, names), columns)


class RetailRocketEvents:
    """events.csv of the RetailRocket dataset: a header, then timestamp,visitorid,event,itemid,transactionid.

    Recipe ``retailrocket``: the session-rec preprocessing used by Ludewig, Mauro, Latifi & Jannach,
    "Empirical analysis of session-based recommendation algorithms" (User Modeling and User-Adapted
    Interaction 31, 2021): each visitor's events of every type, in time order, are cut into sessions at
    pauses longer than 30 minutes (``session_gap``); then only ``view`` events are kept
    (``keep_events``); millisecond timestamps become seconds; no deduplication; one pass of (drop
    sessions shorter than 2, drop items with fewer than 5 views, drop sessions shorter than 2); test =
    the sessions whose last view lies in the last 2 days (the test window of the paper's 27-day slices,
    here as one split of the whole log); test views of items absent from train_full are dropped, then
    test sessions shorter than 2; train_tr/train_valid = the same 2-day split of train_full (session-rec
    splits diginetica that way; its retailrocket script has no validation split). session-rec cuts
    sessions on times truncated to whole seconds; here they keep their milliseconds.
    """

    LAYOUT = "events.csv of RetailRocket: a header, then comma-separated timestamp,visitorid,event,itemid,transactionid"
    WANTED = ("timestamp", "visitorid", "event", "itemid")

    def __init__(self, session_gap: float = 1800.0, keep_events: list[str] | None = None) -> None:
        self.session_gap = _checked_gap(session_gap)
        self.keep_events = list(keep_events) if keep_events is not None else ["view"]

    def read(self, paths: list[Path]) -> Events:
        table = _read_all(paths, self._read_one)
        time = table["timestamp"].to_numpy() / 1000.0
        order, session = sessions_from_gaps(table["visitorid"].to_numpy(), time, self.session_gap)
        log.info("retailrocket: %d sessions from a gap of %g s over all event types", session[-1], self.session_gap)
        kept = pc.is_in(table["event"], pa.array(self.keep_events)).to_numpy(zero_copy_only=False)[order]
        if not kept.any():
            found = pc.unique(table["event"]).to_pylist()
            raise PrepareError(
                f"{paths}: no event of type {self.keep_events} (types found: {found}); "
                "set dataset.reader.keep_events to the types to keep"
            )
        rows = order[kept]
        events = encode(session[kept], table["itemid"].take(rows), time[rows])
        report_merged(events, _source(paths), None, "")  # sessions come from gaps: only duplicates can be merged
        return events

    def _read_one(self, path: Path) -> pa.Table:
        log_file = TextLog(path, ",", self.LAYOUT)
        header_of(log_file, list(self.WANTED))
        columns = [
            Column("timestamp", pa.int64(), "Unix milliseconds, an integer"),
            Column("visitorid", pa.int64(), INTEGER),
            Column("event", pa.string(), "an event type such as view"),
            Column("itemid", pa.int64(), INTEGER),
        ]
        return read_columns(log_file, columns)


class MovieLensRatings:
    """The ratings of a MovieLens release (GroupLens) read as a click log: each rating is one click at its time.

    Layouts, told apart by the first line: ml-100k's ``u.data`` (no header; tab-separated user id, item id, rating,
    Unix seconds), ml-1m's and ml-10m's ``ratings.dat`` (no header; ``user::item::rating::seconds``), and the
    ``ratings.csv`` of ml-20m, ml-25m, ml-32m and ml-latest (a header, then userId,movieId,rating,timestamp). The
    rating's value is not read: a rating says that the user watched the movie, whatever the stars.

    Recipe ``movielens``: each user's ratings, in time order, cut into sessions at pauses longer than an hour
    (``session_gap``); ratings of one second keep the file's order; no deduplication; one pass of (drop sessions
    shorter than 2, drop items with fewer than 5 ratings, drop sessions shorter than 2); test = the sessions whose last
    rating lies in the last 14 days; train_tr/train_valid = the same 14-day split of train_full. On ml-100k it gives
    95,074 training ratings in 2,079 sessions (median 23 ratings, 90th percentile 124): long sessions over a small
    catalog, unlike the shop logs (docs/results.md#a-third-log-movielens-100k).
    """

    LAYOUT = (
        "a MovieLens ratings file: ml-100k's u.data (tab-separated user id, item id, rating, timestamp), "
        "ml-1m's or ml-10m's ratings.dat (user::item::rating::timestamp) or a ratings.csv with the header "
        "userId,movieId,rating,timestamp"
    )
    SECONDS = "Unix seconds, an integer"

    def __init__(self, session_gap: float = 3600.0) -> None:
        self.session_gap = _checked_gap(session_gap)

    def read(self, paths: list[Path]) -> Events:
        table = _read_all(paths, self._read_one)
        if table.num_rows == 0:  # a header alone: no events, which the job reports
            return encode(np.zeros(0, dtype=np.int64), table["item"], np.zeros(0))
        time = table["timestamp"].to_numpy().astype(np.float64)
        order, session = sessions_from_gaps(table["user"].to_numpy(), time, self.session_gap)
        log.info("movielens: %d sessions from a gap of %g s", session[-1], self.session_gap)
        events = encode(session, table["item"].take(order), time[order])
        report_merged(events, _source(paths), None, "")  # sessions come from gaps: only duplicates can be merged
        return events

    def _read_one(self, path: Path) -> pa.Table:
        line = first_line(path, self.LAYOUT)
        if line.startswith("userId,"):
            log_file = TextLog(path, ",", self.LAYOUT)
            header_of(log_file, ["userId", "movieId", "rating", "timestamp"])
            names = {"userId": "user", "movieId": "item", "timestamp": "timestamp"}
        elif "::" in line:
            # "1::1193::5::978300760" split at every colon: the fields lie at 1, 3, 5 and 7, empty ones between.
            fields = ["user id", "", "item id", " ", "rating", "  ", "timestamp"]
            log_file = TextLog(path, ":", self.LAYOUT, fields, header=False)
            names = {"user id": "user", "item id": "item", "timestamp": "timestamp"}
        elif line.split("\t")[0].strip().isdigit() and len(line.split("\t")) == 4:
            log_file = TextLog(path, "\t", self.LAYOUT, ["user id", "item id", "rating", "timestamp"], header=False)
            names = {"user id": "user", "item id": "item", "timestamp": "timestamp"}
        else:
            raise PrepareError(f"{path}, line 1 is {line[:80]!r}; expected {self.LAYOUT}")
        source = list(names)
        types = [pa.int64(), pa.int64(), pa.int64()]
        expected = [INTEGER, INTEGER, self.SECONDS]
        columns = [Column(name, kind, what) for name, kind, what in zip(source, types, expected, strict=True)]
        table = read_columns(log_file, columns)
        return table.select(source).rename_columns([names[name] for name in source])
