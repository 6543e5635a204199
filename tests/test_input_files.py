"""Input files: an unreadable file stops the training loader and prepare_data with a message naming the file, its role
and what was expected; a byte-order mark reads the same in both; Parquet times of every timestamp type; duplicate
rows and sessions spanning a long gap are counted in the log; the shared datasets load as published."""

import gzip
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate

from conftest import SHARED_DATA, compose_config, write_events
from lstm_rec.data import FileDataModule
from lstm_rec.data.io import DataFileError, read_events
from lstm_rec.data.quality import Merged, count_merged
from lstm_rec.data.readable import first_bad_utf8
from lstm_rec.data.sessions import ITEM, SESSION, TIME, ItemIndex, to_sessions
from lstm_rec.prepare.generic import GenericLog
from lstm_rec.prepare.readers import YoochooseClicks

TEXT = "SessionId,ItemId,Time\n1,10,1\n1,11,2\n2,10,3\n2,12,4\n"  # 50 bytes
COLUMNS = "['SessionId', 'ItemId', 'Time']"
READERS = {  # role: (how it reads one file, what it expects of a text file)
    "data.train": (
        lambda path: read_events(path, "data.train"),
        f"a ','-separated text click log with a header line naming {COLUMNS}",
    ),
    "input": (lambda path: GenericLog().read([path]), f"a ','-separated log with a header naming {COLUMNS}"),
}
LATE = TEXT + "3,10,5\n" * 20_000 + "3,caf\xe9,6\n"  # the bad byte lies past the 64 KiB checked before reading
BINARY = np.random.default_rng(0).bytes(4096)
FIRST_NUL = BINARY.find(b"\x00")


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


LIST_COLUMN = pa.table({"SessionId": [1, 1], "ItemId": pa.array([[1], [2]]), "Time": [1.0, 2.0]})
# (case, file name, content, message: {role}, {path} and {expected} filled in)
UNREADABLE = [
    ("empty", "clicks.csv", b"", "{role}: '{path}' is empty (0 bytes); expected {expected}"),
    ("blank", "clicks.csv", b"\n \n\n", "{role}: '{path}' is empty; expected {expected}"),
    (
        "gzip named .csv",
        "clicks.csv",
        gzip.compress(TEXT.encode()),
        "{role}: '{path}' is gzip-compressed but its name ends in '.csv'; expected {expected}: name it 'clicks.csv.gz'",
    ),
    (
        "text named .gz",
        "clicks.csv.gz",
        TEXT.encode(),
        "{role}: '{path}' is not gzip-compressed although its name ends in '.gz'; expected {expected}: name it "
        "'clicks.csv'",
    ),
    (
        "latin-1 early",
        "clicks.csv",
        (TEXT + "3,caf\xe9,5\n").encode("latin-1"),
        "{role}: '{path}', line 6: byte 0xe9 (byte 55 of the file) is not UTF-8 text; expected {expected} in UTF-8: "
        "convert it, e.g. iconv -f latin1 -t utf-8",
    ),
    (
        "latin-1 late",
        "clicks.csv",
        LATE.encode("latin-1"),
        "{role}: '{path}', line 20006: byte 0xe9 (byte 140055 of the file) is not UTF-8 text; expected {expected} in "
        "UTF-8: convert it, e.g. iconv -f latin1 -t utf-8",
    ),
    (
        "random binary",
        "clicks.csv",
        BINARY,
        f"{{role}}: '{{path}}' holds binary data (a NUL byte at byte {FIRST_NUL}), not text; expected {{expected}}",
    ),
    (
        "UTF-16",
        "clicks.csv",
        TEXT.encode("utf-16"),
        "{role}: '{path}' is UTF-16 text; expected {expected} in UTF-8: convert it (iconv -f UTF-16 -t UTF-8)",
    ),
    (
        "Parquet named .csv",
        "clicks.csv",
        parquet_bytes(LIST_COLUMN),
        "{role}: '{path}' is a Parquet file but its name ends in '.csv'; expected {expected}: name it 'clicks.parquet'",
    ),
    (
        "Parquet list column",
        "clicks.parquet",
        parquet_bytes(LIST_COLUMN),
        "{role}: column 'ItemId' of '{path}' holds list<element: int64> values; expected integer or text ids, one "
        "per row",
    ),
]


@pytest.mark.parametrize("role", READERS)
@pytest.mark.parametrize(("name", "content", "message"), [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_an_unreadable_file_is_named_with_its_role_and_what_was_expected(tmp_path, role, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    read, expected = READERS[role]
    with pytest.raises(DataFileError) as error:
        read(path)
    assert str(error.value) == message.format(role=role, path=path, expected=expected)


@pytest.mark.parametrize("role", READERS)
def test_a_file_that_is_not_parquet_says_so(tmp_path, role):
    path = tmp_path / "clicks.parquet"
    path.write_text(TEXT)
    with pytest.raises(DataFileError, match=rf"^{role}: '{path}' is not a readable Parquet file \(.*\); expected a "):
        READERS[role][0](path)


def test_a_byte_order_mark_reads_the_same_in_training_and_prepare(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    frame = read_events(path, "data.train")
    events = GenericLog().read([path])
    assert frame[SESSION].tolist() == events.session.tolist() == [1, 1, 2, 2]
    assert frame[ITEM].tolist() == events.item_ids.take(events.item).to_pylist() == [10, 11, 10, 12]
    assert frame[TIME].tolist() == events.time.tolist() == [1.0, 2.0, 3.0, 4.0]
    # The headerless yoochoose-clicks.dat too: the mark is not taken for a header.
    clicks = tmp_path / "yoochoose-clicks.dat"
    clicks.write_bytes(b"\xef\xbb\xbf1,2014-04-01T10:00:00.277Z,214536500,0\n1,2014-04-01T10:01:00.000Z,214536502,0\n")
    assert YoochooseClicks().read([clicks]).time.tolist() == [1396346400.277, 1396346460.0]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("zone", [None, "UTC", "Europe/Berlin", "+05:30"])
def test_parquet_times_of_every_timestamp_type_become_unix_seconds(tmp_path, unit, zone):
    seconds = [1396346400, 1396346461]  # 2014-04-01T10:00:00Z and a minute and a second later
    stamps = pa.array([s * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit] for s in seconds])
    table = pa.table({"SessionId": [1, 1], "ItemId": [5, 6], "Time": stamps.cast(pa.timestamp(unit, tz=zone))})
    pq.write_table(table, tmp_path / "clicks.parquet")
    assert read_events(tmp_path / "clicks.parquet", "data.train")[TIME].tolist() == [1396346400.0, 1396346461.0]


def test_parquet_dates_are_midnight_utc(tmp_path):
    days = pa.array([16161, 16162], pa.int32()).cast(pa.date32())  # 2014-04-01, 2014-04-02
    pq.write_table(pa.table({"SessionId": [1, 1], "ItemId": [5, 6], "Time": days}), tmp_path / "clicks.parquet")
    assert read_events(tmp_path / "clicks.parquet", "data.train")[TIME].tolist() == [1396310400.0, 1396396800.0]


@pytest.mark.parametrize("name", ["clicks.parquet", "clicks.csv"])
def test_boolean_times_are_refused_like_other_non_numeric_times(tmp_path, name):
    path = write_events(tmp_path / name, [(1, 5, False), (1, 6, True)], sep=",")
    with pytest.raises(DataFileError) as error:
        read_events(path, "data.train")
    assert str(error.value) == (
        f"data.train: column 'Time' of '{path}' must hold finite numeric times (e.g. Unix seconds) or ISO-8601 "
        "date-times; data row 1 has False; set data.time_col to the right column"
    )


@pytest.mark.parametrize("name", ["clicks.csv", "clicks.parquet"])
def test_iso_date_time_text_is_read_as_seconds_without_a_zone_as_utc(tmp_path, name):
    # 2014-04-01 10:00:00 UTC is 1396346400: with a Z, an offset, no zone (UTC), milliseconds, or a date alone.
    rows = [(1, 5, "2014-04-01T10:00:00Z"), (1, 6, "2014-04-01T12:01:00+02:00"), (1, 7, "2014-04-01 10:02:00"),
            (1, 8, "2014-04-01T10:03:00.250"), (2, 5, "2014-04-02")]  # fmt: skip
    events = read_events(write_events(tmp_path / name, rows, sep=","), "data.train", time_unit="ms")  # unit: numbers
    assert events[TIME].tolist() == [1396346400.0, 1396346460.0, 1396346520.0, 1396346580.25, 1396396800.0]
    assert events.attrs["time_unit"] is None


def test_a_row_that_is_not_a_date_time_among_date_times_is_named(tmp_path):
    rows = [(1, 5, "2014-04-01T10:00:00Z"), (1, 6, "2014-04-01T10:01:00Z"), (1, 7, "soon")]
    path = write_events(tmp_path / "clicks.csv", rows, sep=",")
    with pytest.raises(DataFileError) as error:
        read_events(path, "data.train")
    assert str(error.value) == (
        f"data.train: column 'Time' of '{path}' holds ISO-8601 date-times (e.g. '2014-04-01T10:00:00Z'), but data row "
        "3 has 'soon'; every row needs a date-time in the same form, or a number"
    )


# Session 1 is used again two days later; session 2 has the row (2, 10, 5.0) three times, not all next to each other;
# session 3 spans 25 hours without a pause of a day.
MERGED = [(1, 10, 0.0), (1, 11, 60.0), (2, 10, 5.0), (2, 11, 5.0), (2, 10, 5.0), (2, 10, 5.0), (2, 12, 9.0)]
MERGED += [(3, 10, 0.0), (3, 11, 43_200.0), (3, 12, 90_000.0), (1, 12, 172_860.0), (1, 10, 172_900.0)]
DUPLICATES = "2 exact duplicate rows (the same session, item and time as an earlier row) are kept as repeated clicks"
SPANS = "2 sessions span more than 86400 s from first to last click, 1 of them with a pause longer than that"


def test_duplicates_and_long_sessions_are_counted_in_the_loader_log(tmp_path, caplog):
    path = write_events(tmp_path / "clicks.csv", MERGED, sep=",")
    with caplog.at_level(logging.WARNING):
        frame = read_events(path, "data.train")
    assert len(frame) == len(MERGED)  # counted, not changed
    assert f"data.train '{path}': {DUPLICATES}; remove them from the log if they are not" in caplog.text
    assert (
        f"data.train '{path}': {SPANS} between two clicks (a session id used again later?); each stays one session: "
        "to cut sessions at pauses, prepare the log with scripts/prepare_data.py dataset=generic "
        "dataset.reader.session_col=null dataset.reader.user_col=SessionId dataset.reader.session_gap=SECONDS"
    ) in caplog.text


@pytest.mark.parametrize(("gap", "expected"), [(100_000.0, "1 sessions span more than 100000 s"), (None, None)])
def test_the_gap_is_data_reuse_gap(tmp_path, caplog, gap, expected):
    write_events(tmp_path / "clicks.csv", MERGED, sep=",")
    data = FileDataModule(train=str(tmp_path / "clicks.csv"), test=str(tmp_path / "clicks.csv"), reuse_gap=gap)
    with caplog.at_level(logging.WARNING):
        data.load_frames()
    spans = [r.getMessage() for r in caplog.records if "sessions span" in r.getMessage()]
    assert [expected in line for line in spans] == ([True, True] if expected else [])


def test_prepare_data_counts_them_too(tmp_path, caplog):
    path = write_events(tmp_path / "clicks.csv", MERGED, sep=",")
    with caplog.at_level(logging.WARNING):
        events = GenericLog().read([path])
    assert len(events) == len(MERGED)
    assert f"input '{path}': {DUPLICATES}" in caplog.text
    assert f"input '{path}': {SPANS}" in caplog.text
    assert "set dataset.reader.session_col=null user_col=SessionId session_gap=SECONDS to cut them" in caplog.text


# Events, sessions and items of the shared datasets (their READMEs), mapped onto the index of train_full.
SHARED = {
    "yoochoose-100k/{}.tsv": {"train_full": (70_278, 17_794), "test": (13_568, 3_416), "items": 2_933},
    "retailrocket-sessions/{}.parquet": {"train_full": (620_833, 113_552), "test": (61_911, 12_246), "items": 36_416},
}


@pytest.mark.parametrize("pattern", SHARED)
def test_the_shared_datasets_load_as_published(pattern):
    if not (SHARED_DATA / pattern.format("test")).is_file():
        pytest.skip(f"no shared dataset at {SHARED_DATA / pattern.format('test')}")
    frames = {name: read_events(SHARED_DATA / pattern.format(name), f"data.{name}") for name in ("train_full", "test")}
    index = ItemIndex.from_items(frames["train_full"][ITEM])
    assert len(index) == SHARED[pattern]["items"] and index.ids.dtype == np.int64
    for name, frame in frames.items():
        sessions = to_sessions(frame, index, name, f"data.{name}")
        assert (sessions.n_events, sessions.n_sessions) == (len(frame), frame[SESSION].nunique())
        assert (sessions.n_events, sessions.n_sessions) == SHARED[pattern][name]


def test_a_session_with_two_long_pauses_counts_once():
    session, time = np.array([1, 1, 1, 2, 2]), np.array([0.0, 100.0, 200.0, 0.0, 1.0])
    assert count_merged(session, np.array([5, 5, 5, 5, 5]), time, gap=50.0) == Merged(0, 1, 1)
    assert count_merged(session, np.array([5, 5, 5, 5, 5]), time, gap=None) == Merged(0, 0, 0)


def test_the_gap_is_a_config_key_of_the_loader_and_the_readers(tmp_path):
    data = compose_config("train", ["data=files", "data.reuse_gap=null"], tmp_path).data
    assert instantiate(data).reuse_gap is None
    for dataset, gap in (("generic", 3600.0), ("yoochoose", 60.0), ("diginetica", None)):
        value = "null" if gap is None else gap
        overrides = [f"dataset={dataset}", "input=x", "output=y", f"dataset.reader.reuse_gap={value}"]
        reader = instantiate(compose_config("prepare_data", overrides, tmp_path).dataset.reader)
        assert reader.reuse_gap == gap


def test_the_first_bad_byte_is_found_wherever_the_chunks_are_cut():
    data = ("a\n" * 3 + "é").encode() + b"x\nb\xff\n"  # line 5, byte 11; "é" is two bytes
    for cut in range(1, len(data)):
        assert first_bad_utf8(iter([data[:cut], data[cut:]])) == (5, 11, 0xFF)
    assert first_bad_utf8(iter([b"ab\n\xc3"])) == (2, 3, 0xC3)  # a character cut off by the end of the file
    assert first_bad_utf8(iter([b"ab\n\xc3"]), final=False) is None  # ... or by the end of a head


def test_a_column_of_numbers_and_date_times_is_named_as_mixed(tmp_path):
    rows = [(1, 5, "1396346400"), (1, 6, "1396346460"), (1, 7, "2014-04-01T10:02:00Z")]
    path = write_events(tmp_path / "clicks.csv", rows, sep=",")
    with pytest.raises(DataFileError) as error:
        read_events(path, "data.train")
    assert str(error.value) == (
        f"data.train: column 'Time' of '{path}' mixes numbers (e.g. '1396346400') and ISO-8601 date-times (data row 3 "
        "has '2014-04-01T10:02:00Z'); every row needs a time in one form"
    )
