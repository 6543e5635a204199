"""Concurrent /recommend requests scored together: the answers are the unbatched ones to the last bit, per-request
options kept, batches bounded by max_batch and max_wait_ms, and a request that fails fails alone. The real server
runs in a thread on a loopback port, with the shared ensemble (repeat scores and a prior)."""

import threading
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
import torch

from conftest import serving
from lstm_rec import Recommender
from lstm_rec.serving.http import MODEL_VERSION, create_app
from lstm_rec.serving.recommender import Query, Recommendations


class Recording(Recommender):
    """A Recommender that records the size of every batch it scores, and fails every batch that holds a session
    with the id "boom"."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def answer(self, queries: Sequence[Query]) -> list[Recommendations]:
        self.batches.append(len(queries))
        if any("boom" in query.items for query in queries):
            raise RuntimeError("boom")
        return super().answer(queries)


@pytest.fixture(scope="module")
def checkpoint(trained_runs) -> str:
    return trained_runs["ensemble"][1]["checkpoint"]


def varied_requests(rec: Recommender, n: int, seed: int = 0) -> list[dict]:
    """Sessions of 0 to 15 clicks (some unknown, some ids sent as text), k from 1 to 30, exclude_seen or not."""
    rng = np.random.default_rng(seed)
    ids = rec.item_index.ids.tolist()
    requests = []
    for _ in range(n):
        items: list = [ids[i] for i in rng.integers(0, len(ids), rng.integers(0, 16))]
        if items and rng.random() < 0.2:
            items[rng.integers(len(items))] = "no-such-item"
        if items and rng.random() < 0.2:
            items[0] = str(items[0])
        requests.append({"items": items, "k": int(rng.integers(1, 31)), "exclude_seen": bool(rng.random() < 0.5)})
    return requests


def unbatched(rec: Recommender, request: dict) -> dict:
    """The answer to `request` alone, as the service sends it."""
    top = rec.recommend(request["items"], request["k"], request["exclude_seen"])
    items, scores = [item for item, _ in top], [score for _, score in top]
    return {"items": items, "scores": scores, "fallback": top.fallback, "unknown": top.unknown}


def post_all(url: str, requests: list[dict], threads: int, keep_alive: bool = True) -> list[httpx.Response | None]:
    """Every request posted once to /recommend, from `threads` threads at once; the answers in order. Without
    `keep_alive`, each on a connection of its own (uvicorn closes a connection after a 500)."""
    answers: list[httpx.Response | None] = [None] * len(requests)
    start = threading.Barrier(threads)
    limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)

    def send(share: range) -> None:
        with httpx.Client(base_url=url, timeout=30, limits=limits) as client:
            start.wait()
            for position in share:
                answers[position] = client.post("/recommend", json=requests[position])

    workers = [threading.Thread(target=send, args=(range(i, len(requests), threads),)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return answers


@pytest.mark.parametrize("max_batch", [1, 16])
def test_batched_answers_are_the_unbatched_ones(checkpoint, max_batch):
    rec, alone = Recording.from_checkpoint(checkpoint), Recommender.from_checkpoint(checkpoint)
    requests = varied_requests(rec, 400)
    with serving(create_app(rec, max_k=30, max_batch=max_batch, max_wait_ms=5)) as url:
        answers = post_all(url, requests, threads=16)
    assert [answer.status_code for answer in answers] == [200] * len(requests)
    assert {answer.headers[MODEL_VERSION] for answer in answers} == {"1"}
    for request, answer in zip(requests, answers, strict=True):
        assert answer.json() == unbatched(alone, request), request  # items and scores, to the last bit
    assert sum(rec.batches) == len(requests)  # every request scored once
    if max_batch == 1:
        assert set(rec.batches) == {1}
    else:
        assert max(rec.batches) <= max_batch and np.mean(rec.batches) > 2, rec.batches


def test_a_failing_request_fails_alone(checkpoint):
    rec, alone = Recording.from_checkpoint(checkpoint), Recommender.from_checkpoint(checkpoint)
    requests = varied_requests(rec, 60, seed=1)
    for position in (5, 25, 45):
        requests[position] = {"items": ["boom"], "k": 3, "exclude_seen": False}
    with serving(create_app(rec, max_k=30, max_batch=32, max_wait_ms=50)) as url:
        answers = post_all(url, requests, threads=30, keep_alive=False)
    for request, answer in zip(requests, answers, strict=True):
        if request["items"] == ["boom"]:
            assert answer.status_code == 500
        else:
            assert answer.status_code == 200 and answer.json() == unbatched(alone, request)
    assert max(rec.batches) > 1  # the failing requests shared batches with others, then each was answered alone


@pytest.mark.alone
def test_a_batch_waits_at_most_max_wait_ms_and_not_once_full(checkpoint):
    rec = Recording.from_checkpoint(checkpoint)
    ids = rec.item_index.ids[:4].tolist()
    requests = [{"items": [item], "k": 5, "exclude_seen": False} for item in ids]
    with serving(create_app(rec, max_batch=4, max_wait_ms=1000)) as url:
        start = time.perf_counter()
        assert httpx.post(f"{url}/recommend", json=requests[0], timeout=30).status_code == 200
        alone = time.perf_counter() - start
        start = time.perf_counter()
        answers = post_all(url, requests, threads=4)
        together = time.perf_counter() - start
    assert [answer.status_code for answer in answers] == [200] * 4
    assert rec.batches == [1, 4]
    assert 1.0 <= alone < 5 and together < 1.0, (alone, together)


def test_bad_batching_settings_are_refused_with_their_name(checkpoint):
    rec = Recommender.from_checkpoint(checkpoint)
    expected = r"^the service's max_batch must be a whole number of requests, 1 or more, got 0$"
    with pytest.raises(ValueError, match=expected):
        create_app(rec, max_batch=0)
    with pytest.raises(ValueError, match=r"^the service's max_wait_ms must be 0 to 1000 milliseconds, got -1$"):
        create_app(rec, max_wait_ms=-1)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_session_scores_the_same_in_any_batch(checkpoint, threads):
    """Recommender.answer, below the service: each session alone and in batches of 1 to 20 others, in every position."""
    rec = Recommender.from_checkpoint(checkpoint)
    queries = [Query(r["items"], r["k"], r["exclude_seen"]) for r in varied_requests(rec, 60, seed=2)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = [rec.answer([query])[0] for query in queries]
        for size in range(1, 21):
            for begin in range(0, len(queries), size):
                batch = rec.answer(queries[begin : begin + size])
                assert [list(top) for top in batch] == [list(top) for top in alone[begin : begin + size]], size
    finally:
        torch.set_num_threads(before)
