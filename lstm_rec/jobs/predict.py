"""The recommend job (scripts/recommend.py): top-k lists for sessions given on the command line or in a click log."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, ListConfig

from lstm_rec.data.ids import check_known
from lstm_rec.data.io import read_events
from lstm_rec.data.sessions import ITEM, SESSION
from lstm_rec.serving.recommender import Recommendations, Recommender

log = logging.getLogger(__name__)


def recommend_job(cfg: DictConfig) -> pd.DataFrame:
    """Top-k lists for ``cfg["items"]`` or, in batch mode, for every session (or prefix) of ``cfg.input``.

    Returns a long table: session, position (batch mode with per_position), rank, item, score, fallback.
    """
    rec = Recommender.from_checkpoint(cfg.ckpt_path, device=cfg.device)
    if (cfg["items"] is None) == (cfg.input is None):
        raise ValueError("give either items=[id1,id2,...] or input=PATH (a click log for batch mode), not both")
    if cfg["items"] is not None:
        items = list(cfg["items"]) if isinstance(cfg["items"], ListConfig) else [cfg["items"]]
        return _table([("", None, rec.recommend(items, cfg.k, cfg.exclude_seen))])
    events = read_events(
        Path(cfg.input), "input", cfg.session_col, cfg.item_col, cfg.time_col, cfg.sep,
        time_unit=cfg.get("time_unit", "auto"), unit_key="time_unit",
    )  # fmt: skip
    known = rec.item_index.lookup(events[ITEM]) > 0  # most rows unknown stops the job, not a fallback per session
    check_known(f"input '{cfg.input}'", events[ITEM].to_numpy(), known, rec.item_index.ids)
    table = recommend_events(rec, events, cfg.k, cfg.exclude_seen, cfg.per_position, cfg.batch_size)
    if cfg.output is None:
        raise ValueError("batch mode writes a file: set output=PATH (.csv, .tsv or .parquet)")
    _write(table, Path(cfg.output))
    log.info("wrote %d recommendations for %d sessions to %s", len(table), table["session"].nunique(), cfg.output)
    return table


def recommend_events(
    rec: Recommender, events: pd.DataFrame, k: int, exclude_seen: bool, per_position: bool, batch_size: int
) -> pd.DataFrame:
    """The long table of top-k lists for every session of a sorted event frame (or after every click of it).

    Per session, `batch_size` sessions are scored at a time. Per position, consecutive sessions of at most
    `batch_size` padded clicks (a longer session alone) go through the network once: one LSTM step per click.
    """
    sessions = events.groupby(SESSION, sort=False)[ITEM].agg(list)
    names, clicks = list(sessions.index), list(sessions)
    answers: list[tuple[Hashable, int | None, Recommendations]] = []
    if not per_position:
        for begin in range(0, len(clicks), batch_size):
            tops = rec.recommend_batch(clicks[begin : begin + batch_size], k, exclude_seen)
            answers += [(name, None, top) for name, top in zip(names[begin : begin + batch_size], tops, strict=True)]
        return _table(answers)
    for batch in _click_batches([len(items) for items in clicks], batch_size):
        tops = rec.recommend_positions_batch(clicks[batch], k, exclude_seen)
        for name, after_each in zip(names[batch], tops, strict=True):
            answers += [(name, position, top) for position, top in enumerate(after_each, start=1)]
    return _table(answers)


def _click_batches(lengths: list[int], budget: int) -> list[slice]:
    """Runs of consecutive sessions whose padded size (sessions x the longest) stays within `budget` clicks."""
    batches, begin, longest = [], 0, 0
    for end, length in enumerate(lengths):
        if end > begin and (end - begin + 1) * max(longest, length) > budget:
            batches.append(slice(begin, end))
            begin, longest = end, 0
        longest = max(longest, length)
    return [*batches, slice(begin, len(lengths))] if lengths else batches


def _table(answers: list[tuple[Hashable, int | None, Recommendations]]) -> pd.DataFrame:
    rows = [
        {"session": session, "position": position, "rank": rank, "item": item, "score": score, "fallback": top.fallback}
        for session, position, top in answers
        for rank, (item, score) in enumerate(top, start=1)
    ]
    table = pd.DataFrame(rows, columns=["session", "position", "rank", "item", "score", "fallback"])
    return table if table["position"].notna().any() else table.drop(columns="position")


def _write(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    elif suffix in (".csv", ".tsv", ".txt"):
        table.to_csv(path, sep="," if suffix == ".csv" else "\t", index=False)
    else:
        raise ValueError(f"output: cannot write '{path}'; expected a .csv, .tsv or .parquet file name")
