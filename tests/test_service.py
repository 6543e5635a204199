"""The HTTP service: round trips, bad requests answered with 4xx, and the real server on loopback."""

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import ROOT, run_script
from lstm_rec import Recommender
from lstm_rec.serving.http import create_app, free_port, wait_until_up


@pytest.fixture(scope="module")
def served(trained_runs) -> str:
    """The ensemble's checkpoint (repeat scores and a prior): the service must score with both."""
    return trained_runs["ensemble"][1]["checkpoint"]


@pytest.fixture(scope="module")
def rec(served):
    return Recommender.from_checkpoint(served)


@pytest.fixture(scope="module")
def client(rec):
    return TestClient(create_app(rec, max_items=50, max_k=30))


def test_round_trip_matches_the_python_api(client, rec):
    session = rec.item_index.ids[[3, 7, 7, 1]].tolist()
    answer = client.post("/recommend", json={"items": session, "k": 5})
    assert answer.status_code == 200
    expected = rec.recommend(session, k=5)
    assert answer.json()["items"] == [item for item, _ in expected]
    assert answer.json()["scores"] == pytest.approx([score for _, score in expected])
    assert answer.json()["fallback"] is False and answer.json()["unknown"] == []


def test_health(client, rec):
    expected = {"status": "ok", "n_items": rec.n_items, "max_items": 50, "max_k": 30, "recent_clicks": False}
    expected |= {"reload": False, "model_version": 1}
    assert client.get("/health").json() == expected


def test_recent_clicks_refresh_the_prior_when_switched_on(served, client):
    # Off by default: the endpoint does not exist.
    assert client.post("/recent_clicks", json={"items": [1]}).status_code == 404
    rec, twin = Recommender.from_checkpoint(served), Recommender.from_checkpoint(served)
    live = TestClient(create_app(rec, max_items=50, max_k=30, recent_clicks=True, max_recent_clicks=8))
    assert live.get("/health").json()["recent_clicks"] is True
    ids = rec.item_index.ids.tolist()
    session = [ids[3], ids[7]]
    clicks = [ids[5], ids[5], ids[9], str(ids[9]), "nope", ids[5]]  # str(id) is the same id, in the index's type
    answer = live.post("/recent_clicks", json={"items": clicks, "weight": 0.5})
    assert answer.status_code == 200
    assert answer.json() == {"clicks": 5, "items": 2, "weight": 0.5, "unknown": ["nope"]}
    expected = torch.zeros(rec.n_items)
    expected[5], expected[9] = 0.5 * np.log(4.0), 0.5 * np.log(3.0)
    torch.testing.assert_close(rec.prior.scores, expected)
    # Answers now carry the new prior: as the Python API gives them after the same refresh.
    twin.set_recent_clicks(clicks, weight=0.5)
    got = live.post("/recommend", json={"items": session, "k": 10}).json()
    assert got["items"] == [item for item, _ in twin.recommend(session, k=10)]
    assert got["scores"] == pytest.approx([score for _, score in twin.recommend(session, k=10)], abs=1e-5)
    # No weight: the model's own (as trained, 0.5 here).
    assert live.post("/recent_clicks", json={"items": [ids[5]]}).json()["weight"] == rec.recent_weight == 0.5
    # Bad requests get 422 and change nothing.
    before = rec.prior.scores.clone()
    for body, problem in (
        ({"items": [ids[5]], "weight": -1}, "greater_than_equal"),
        ({"items": [ids[5]] * 9}, "too_long"),
        ({"items": [ids[5]], "weight": "0.5"}, "float_type"),
        ({"items": [ids[5]], "hours": 8}, "extra_forbidden"),
    ):
        answer = live.post("/recent_clicks", json=body)
        assert answer.status_code == 422 and problem in {error["type"] for error in answer.json()["detail"]}
    torch.testing.assert_close(rec.prior.scores, before)


def test_unknown_and_empty_sessions(client):
    answer = client.post("/recommend", json={"items": [-1, "x"], "k": 3}).json()
    assert answer["fallback"] is True and answer["unknown"] == [-1, "x"] and len(answer["items"]) == 3
    assert client.post("/recommend", json={"items": []}).json()["fallback"] is True


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"items": [1, 2', "json_invalid"),  # malformed JSON
        ('{"items": "1,2"}', "list_type"),  # wrong type
        ('{"items": [1.5]}', "int_type"),  # not an id
        ('{"items": [1], "k": "5"}', "int_type"),
        ('{"items": [1], "k": 0}', "greater_than_equal"),
        ('{"items": [1], "k": 31}', "less_than_equal"),
        ('{"items": ' + str(list(range(51))) + "}", "too_long"),  # oversized list
        ('{"k": 5}', "missing"),
        ('{"items": [1], "colour": "red"}', "extra_forbidden"),
    ],
)
def test_bad_requests_get_422_and_the_service_keeps_serving(client, body, problem):
    answer = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert problem in {error["type"] for error in answer.json()["detail"]}
    assert client.post("/recommend", json={"items": [1], "k": 2}).status_code == 200


@pytest.mark.slow
def test_the_real_server_listens_on_loopback(served, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "scripts/serve.py", f"ckpt_path={served}", f"port={port}", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server)
        answer = httpx.post(f"{url}/recommend", json={"items": [1, 2], "k": 4}, timeout=5)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 4
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output


@pytest.mark.slow
def test_load_benchmark_reports_its_numbers(served, tmp_path):
    bench = tmp_path / "bench.json"
    run_script(
        "scripts/benchmark_serve.py", "--ckpt", served, "--requests", "60", "--concurrency", "2", "--output", str(bench)
    )
    numbers = json.loads((tmp_path / "bench.json").read_text())
    assert [run["max_batch"] for run in numbers["runs"]] == [1, 32]  # unbatched and batched, in one run
    for run in numbers["runs"]:
        assert run["requests"] == 60 and run["errors"] == 0
        assert run["requests_per_second"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
