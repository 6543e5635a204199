"""Concurrent /recommend requests scored together: queries that arrive within a few milliseconds of each other, or
while the batch before them is being scored, go through the network in one forward pass (Recommender.answer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from lstm_rec.serving.recommender import Query, Recommendations, Recommender

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """Queries that one recommender scores together, and the future of their answers (an exception for a query that
    failed)."""

    rec: Recommender
    answers: asyncio.Future[list[Recommendations | Exception]]
    queries: list[Query] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)


class Batcher:
    """Answers queries in batches of at most `max_batch`.

    A batch opens with its first query and takes the queries that follow for at most `max_wait` seconds (less when it
    fills up), then until the batch before it has been scored: one batch is scored at a time, in the thread pool, so
    that the event loop keeps answering. `max_batch=1` answers every query alone, in the thread pool, as it comes.
    Answers are the unbatched ones to the last bit (Recommender.answer), and a query that fails fails alone.
    """

    def __init__(self, max_batch: int = 32, max_wait: float = 0.002) -> None:
        self.max_batch, self.max_wait = max_batch, max_wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: _Batch | None = None
        self._scoring = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # running batches, held so that they are not garbage-collected

    async def recommend(self, rec: Recommender, query: Query) -> Recommendations:
        """`query`'s answer from `rec`, scored together with the queries around it."""
        if self.max_batch == 1:
            return (await run_in_threadpool(rec.answer, [query]))[0]
        batch = self._joinable(rec)
        position = len(batch.queries)
        batch.queries.append(query)
        if len(batch.queries) == self.max_batch:
            batch.full.set()
            self._open = None
        answer = (await asyncio.shield(batch.answers))[position]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _joinable(self, rec: Recommender) -> _Batch:
        """The open batch of `rec`, or a new one (a reload puts another recommender in service)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client's): nothing of the previous one carries over
            self._loop, self._open, self._scoring = loop, None, asyncio.Lock()
        if self._open is None or self._open.rec is not rec:
            self._open = _Batch(rec, loop.create_future())
            task = loop.create_task(self._score(self._open, self._scoring))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self._open

    async def _score(self, batch: _Batch, scoring: asyncio.Lock) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # full, or waited long enough (3.10: not TimeoutError)
            await asyncio.wait_for(batch.full.wait(), self.max_wait)
        try:
            async with scoring:
                if self._open is batch:
                    self._open = None  # later queries open the next batch
                answers = await run_in_threadpool(answer_each, batch.rec, batch.queries)
        except BaseException as error:  # e.g. cancelled at shutdown: the queries must not wait forever
            batch.answers.set_exception(error)
            raise
        batch.answers.set_result(answers)


def answer_each(rec: Recommender, queries: list[Query]) -> list[Recommendations | Exception]:
    """Every query's answer, scored together; if that fails, each alone, so that a bad query fails only itself."""
    try:
        return rec.answer(queries)
    except Exception:
        if len(queries) > 1:
            log.warning("a batch of %d queries failed; answering each alone", len(queries), exc_info=True)
        return [_alone(rec, query) for query in queries]


def _alone(rec: Recommender, query: Query) -> Recommendations | Exception:
    try:
        return rec.answer([query])[0]
    except Exception as error:
        return error
