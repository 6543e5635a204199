"""Scale check of prepare_data: a synthetic yoochoose-clicks.dat of N events, prepared and loaded in child processes."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv

GIB = 1 << 30
START = np.datetime64("2014-04-01T00:00:00", "ms").astype(np.int64)  # Unix milliseconds
SPAN_MS = 183 * 86_400_000  # the six months of RecSys Challenge 2015


def _chunk(
    rng: np.random.Generator, first_session: int, n_events: int, n_items: int, total: float, scramble: bool
) -> pa.Table:
    """About ``n_events`` clicks of whole sessions numbered from ``first_session`` (ids scrambled if asked)."""
    lengths = np.minimum(rng.geometric(1 / 3.6, size=n_events // 3 + 1), 200)  # mean about 3.6, like RSC15
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_events) + 1]
    n_sessions = len(lengths)
    session_ids = np.arange(first_session, first_session + n_sessions)
    starts = START + (session_ids / total * SPAN_MS).astype(np.int64) + rng.integers(0, 3_600_000, n_sessions)
    session = np.repeat(session_ids, lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    elapsed = np.cumsum(rng.exponential(60_000, size=len(session)).astype(np.int64))
    millis = np.repeat(starts, lengths) + elapsed - elapsed[first]  # a session's first click at its start
    item = (n_items * rng.random(len(session)) ** 3).astype(np.int64) + 214_500_000  # popular items first
    rare = rng.random(len(session)) < 0.002  # and a few clicks on any of 5M items: most under 5 clicks
    item[rare] = 300_000_000 + rng.integers(0, 5_000_000, rare.sum())
    repeat = rng.random(len(session)) < 0.1  # clicks that repeat the previous item of the session
    repeat[first] = False
    item[repeat] = item[np.flatnonzero(repeat) - 1]
    category = np.where(rng.random(len(session)) < 0.95, "0", "S")
    stamps = np.datetime_as_string(millis.astype("datetime64[ms]"), unit="ms", timezone="UTC")
    if scramble:  # a bijection of 32-bit ids: sessions stay contiguous but are no longer in id order
        session = (session * 2_654_435_761) % (1 << 32)
    return pa.table({"s": session, "t": stamps, "i": item, "c": category})


def write_clicks(
    path: Path | str,
    n_events: int,
    seed: int = 0,
    n_items: int = 60_000,
    scramble: bool = False,
    chunk: int = 2_000_000,
) -> int:
    """Write about ``n_events`` clicks in the raw yoochoose-clicks.dat format; returns the number written.

    With ``scramble`` the session ids are not increasing along the file, so preparing it has to sort.
    """
    rng = np.random.default_rng(seed)
    total_sessions, written, next_session = n_events / 3.6, 0, 1
    options = csv.WriteOptions(include_header=False, quoting_style="none")
    with pa.OSFile(str(path), "wb") as sink:
        while written < n_events:
            table = _chunk(rng, next_session, min(chunk, n_events - written), n_items, total_sessions, scramble)
            csv.write_csv(table, sink, options)
            written += table.num_rows
            next_session += int(pc.count_distinct(table["s"]).as_py())
    return written


def _measured(command: list[str]) -> dict[str, Any]:
    """Run ``command`` as a child; its wall time, peak resident memory and the JSON (or number) it prints last."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{output[-3000:]}")
    last = output.strip().splitlines()[-1] if output.strip() else ""
    result = json.loads(last) if last[:1] in "{0123456789" and last else {}
    result = result if isinstance(result, dict) else {"result": result}
    peak = round(usage.ru_maxrss * 1024 / GIB, 2)
    return result | {"wall_seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": peak}


def measure_load(path: str) -> None:
    """(Child process) read a prepared split into the training arrays as FileDataModule does; print JSON."""
    from lstm_rec.data.io import read_events
    from lstm_rec.data.sessions import ITEM, ItemIndex, to_sessions

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    start = time.perf_counter()
    events = read_events(path, "data.train")
    index = ItemIndex.from_items(events[ITEM])
    sessions = to_sessions(events, index, "train")
    seconds = time.perf_counter() - start
    arrays = sessions.items.nbytes + sessions.offsets.nbytes + sessions.times.nbytes + index.ids.nbytes
    result = {"load_seconds": round(seconds, 1), "rss_after_imports_gib": round(rss_before, 2)}
    result["arrays_gib"] = round(arrays / GIB, 2)
    print(json.dumps(result | {"events": sessions.n_events, "sessions": sessions.n_sessions}))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", f"from lstm_rec.prepare.benchmark import *; {code}"]


def benchmark(
    n_events: int, workdir: Path, root: Path, recipe: str = "yoochoose", scramble: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Generate, prepare (scripts/prepare_data.py) and load N events; times and peak memory of each part.

    Each part runs in its own child process, started from this small one: Linux children start with
    their parent's peak memory as theirs, so a parent that generated the data would inflate the rest.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    raw, output = workdir / "yoochoose-clicks.dat", workdir / "prepared"
    generate = f"print(write_clicks({str(raw)!r}, {n_events}, {seed}, scramble={scramble}))"
    report: dict[str, Any] = {"generate": _measured(_python(generate))}
    report["raw_gib"] = round(raw.stat().st_size / GIB, 2)
    prepare = [sys.executable, str(root / "scripts" / "prepare_data.py"), f"dataset={recipe}", f"input={raw}"]
    prepare += [f"output={output}"]
    report["prepare"] = _measured([*prepare, "overwrite=true", f"hydra.run.dir={workdir / 'hydra'}"])
    stats = json.loads((output / "stats.json").read_text())
    report["prepared_events"] = {name: split["events"] for name, split in stats["splits"].items()}
    report["load_train_full"] = _measured(_python(f"measure_load({str(output / 'train_full.parquet')!r})"))
    return report
