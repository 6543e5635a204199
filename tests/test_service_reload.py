"""POST /reload: another checkpoint in service without a restart. Requests never fail and every answer comes from one
model, named by its x-model-version header; a checkpoint that fails to load leaves the old model serving, with a 422
that says why. Two shared trained models whose answers differ: the plain LSTM and the ensemble."""

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import ROOT, serving
from lstm_rec import Recommender
from lstm_rec.checkpoint import write_entry
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.model import build_network
from lstm_rec.serving import live as live_module
from lstm_rec.serving.http import MODEL_VERSION, create_app, free_port, wait_until_up
from lstm_rec.serving.live import LiveModel


@pytest.fixture(scope="module")
def models(trained_runs) -> dict[str, str]:
    return {name: run[1]["checkpoint"] for name, run in trained_runs.items()}


def sessions_of(ckpt: str, n: int = 40) -> list[list[int]]:
    ids = Recommender.from_checkpoint(ckpt).item_index.ids.tolist()
    rng = np.random.default_rng(0)
    return [[ids[i] for i in rng.integers(0, len(ids), rng.integers(1, 8))] for _ in range(n)]


def expected_answers(ckpt: str, sessions: list[list[int]], k: int = 10) -> list[dict]:
    """The answer to each session alone, as the service sends it."""
    rec = Recommender.from_checkpoint(ckpt)
    answers = []
    for session in sessions:
        top = rec.recommend(session, k)
        items, scores = [i for i, _ in top], [s for _, s in top]
        answers.append({"items": items, "scores": scores, "fallback": top.fallback, "unknown": top.unknown})
    return answers


def garbage_checkpoint(path: Path) -> Path:
    path.write_bytes(b"not a checkpoint" * 100)
    return path


def nan_checkpoint(source: str, path: Path) -> Path:
    """`source` with one NaN in its LSTM's weights: it loads, and scores every item NaN."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["net.lstms.0.weight_ih_l0"][0, 0] = math.nan
    torch.save(checkpoint, path)
    return path


def small_checkpoint(path: Path, n_items: int = 50) -> Path:
    """An untrained network over item ids 1000..1000 + n_items - 1."""
    torch.manual_seed(0)
    settings = {"embedding_dim": 8, "hidden": 8}
    checkpoint = {"state_dict": {f"net.{k}": v for k, v in build_network(n_items, settings).state_dict().items()}}
    write_entry(checkpoint, ItemIndex(np.arange(1000, 1000 + n_items), np.arange(1, n_items + 1)), settings, None, 0.0)
    torch.save(checkpoint, path)
    return path


class Traffic:
    """Threads that post /recommend continuously, each cycling through the sessions, recording every answer with the
    time its request was sent."""

    def __init__(self, url: str, sessions: list[list[int]], threads: int) -> None:
        self.url, self.sessions = url, sessions
        self.answers: list[tuple[float, int, httpx.Response | Exception]] = []  # (sent at, session, answer)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(i,)) for i in range(threads)]

    def _send(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            position = offset
            while not self.stop.is_set():
                session = position % len(self.sessions)
                sent = time.monotonic()
                try:
                    answer = client.post("/recommend", json={"items": self.sessions[session], "k": 10})
                except httpx.HTTPError as error:
                    answer = error
                self.answers.append((sent, session, answer))
                position += len(self.threads)

    def wait_for(self, more: int) -> None:
        """Until `more` answers have come since now."""
        target, deadline = len(self.answers) + more, time.monotonic() + 60
        while len(self.answers) < target:
            assert time.monotonic() < deadline, "the traffic stalled"
            time.sleep(0.01)

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.mark.slow
def test_reloads_under_load_fail_no_request_and_mix_no_answers(models, tmp_path):
    """scripts/serve.py with reload=true and batching: 6 threads post continuously during three reloads (the ensemble,
    the starting LSTM again with an empty body, the ensemble) and one that fails."""
    first, second = models["lstm"], models["ensemble"]
    sessions = sessions_of(first)
    expected = {name: expected_answers(ckpt, sessions) for name, ckpt in models.items()}
    assert all(a != b for a, b in zip(expected["lstm"], expected["ensemble"], strict=True))  # every answer tells
    port = free_port()
    command = [sys.executable, "scripts/serve.py", f"ckpt_path={first}", f"port={port}", "reload=true", "max_batch=8"]
    server = subprocess.Popen([*command, "log_level=warning", f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    reloads: list[tuple[float, int]] = []  # (answered at, version in service)
    try:
        wait_until_up(url, server)
        with Traffic(url, sessions, threads=6) as traffic, httpx.Client(base_url=url, timeout=60) as admin:
            traffic.wait_for(50)
            for body, version in (({"ckpt_path": second}, 2), (None, 3), ({"ckpt_path": second}, 4)):
                answer = admin.post("/reload", json=body) if body else admin.post("/reload")
                reloads.append((time.monotonic(), version))
                assert answer.status_code == 200, answer.text
                assert answer.json()["model_version"] == version and answer.json()["seconds"] > 0
                assert admin.get("/health").json()["model_version"] == version
                traffic.wait_for(50)
            failed = admin.post("/reload", json={"ckpt_path": str(garbage_checkpoint(tmp_path / "garbage.ckpt"))})
            traffic.wait_for(50)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert failed.status_code == 422 and failed.json()["detail"].endswith("; still serving model version 4")
    assert "is not a readable PyTorch checkpoint" in failed.json()["detail"]
    errors = [answer for _, _, answer in traffic.answers if not isinstance(answer, httpx.Response)]
    assert errors == [] and {answer.status_code for _, _, answer in traffic.answers} == {200}
    versions_seen = set()
    for sent, session, answer in traffic.answers:
        version = int(answer.headers[MODEL_VERSION])
        versions_seen.add(version)
        assert answer.json() == expected["lstm" if version % 2 else "ensemble"][session], (version, session)
        # A request sent after a reload was answered is answered by that model or a later one.
        assert version >= max([v for answered, v in reloads if answered < sent], default=1)
    assert versions_seen == {1, 2, 3, 4}


@pytest.fixture
def lstm_client(models):
    live = LiveModel.from_checkpoint(models["lstm"])
    with TestClient(create_app(live, reload=True, recent_clicks=True)) as client:
        yield client


def test_a_checkpoint_that_fails_leaves_the_old_model_serving(models, lstm_client, tmp_path):
    session = sessions_of(models["lstm"], 1)[0]
    before = lstm_client.post("/recommend", json={"items": session}).json()
    missing = tmp_path / "missing.ckpt"
    tail = "…" + str(missing)[-63:]  # a path is repeated whole up to 64 characters, else its end
    assert len(str(missing)) > 64
    for body, status, detail in (
        ({"ckpt_path": str(missing)}, 422, f"ckpt_path: no checkpoint at '{tail}'; still serving model version 1"),
        (
            {"ckpt_path": str(garbage_checkpoint(tmp_path / "garbage.ckpt"))},
            422,
            "/garbage.ckpt' is not a readable PyTorch checkpoint of tensors and plain values",
        ),
        (
            {"ckpt_path": str(nan_checkpoint(models["lstm"], tmp_path / "nan.ckpt"))},
            422,
            "its network scores items NaN or infinite",
        ),
        ({"ckpt_path": "x" * 5000}, 422, "string_too_long"),
        ({"ckpt_path": 7}, 422, "string_type"),
        ({"path": str(missing)}, 422, "extra_forbidden"),
    ):
        answer = lstm_client.post("/reload", json=body)
        assert answer.status_code == status and detail in str(answer.json()["detail"]), answer.text
        assert len(answer.content) < 1200
    assert lstm_client.post("/reload", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert lstm_client.get("/health").json()["model_version"] == 1
    after = lstm_client.post("/recommend", json={"items": session})
    assert after.json() == before and after.headers[MODEL_VERSION] == "1"


def test_a_reload_without_a_path_loads_the_first_checkpoint_again(models, lstm_client):
    session = sessions_of(models["lstm"], 1)[0]
    assert lstm_client.post("/reload", json={"ckpt_path": models["ensemble"]}).json()["model_version"] == 2
    ensemble = lstm_client.post("/recommend", json={"items": session}).json()
    for version, empty in enumerate(({}, {"ckpt_path": None}), start=3):
        answer = lstm_client.post("/reload", json=empty)
        assert answer.json()["model_version"] == version
        assert answer.json()["ckpt_path"] in {models["lstm"], "…" + models["lstm"][-63:]}
        assert lstm_client.post("/recommend", json={"items": session}).json() != ensemble
    assert lstm_client.post("/reload").json()["model_version"] == 5  # no body at all
    expected = expected_answers(models["lstm"], [session])[0]
    assert lstm_client.post("/recommend", json={"items": session, "k": 10}).json() == expected


def test_a_service_not_started_from_a_file_needs_a_path(models):
    client = TestClient(create_app(Recommender.from_checkpoint(models["lstm"]), reload=True))
    answer = client.post("/reload")
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "ckpt_path: the first model was not loaded from a file: send a ckpt_path; still serving model version 1"
    )


def test_reload_is_off_by_default(models):
    client = TestClient(create_app(LiveModel.from_checkpoint(models["lstm"])))
    assert client.post("/reload", json={"ckpt_path": models["ensemble"]}).status_code == 404
    assert client.get("/health").json()["reload"] is False


def test_the_new_model_keeps_the_latest_recent_clicks(models, lstm_client):
    ensemble = Recommender.from_checkpoint(models["ensemble"])
    ids = ensemble.item_index.ids.tolist()
    clicks, session = [ids[5], ids[5], ids[9]], [ids[3], ids[7]]
    assert lstm_client.post("/recent_clicks", json={"items": clicks, "weight": 2.0}).status_code == 200
    assert lstm_client.post("/reload", json={"ckpt_path": models["ensemble"]}).status_code == 200
    got = lstm_client.post("/recommend", json={"items": session, "k": 10}).json()
    assert got != expected_answers(models["ensemble"], [session])[0]  # the checkpoint's own prior is not in use
    ensemble.set_recent_clicks(clicks, weight=2.0)
    top = ensemble.recommend(session, k=10)
    assert got["items"] == [i for i, _ in top] and got["scores"] == [s for _, s in top]


def test_a_model_with_other_items_brings_its_own_limits(models, lstm_client, tmp_path):
    assert lstm_client.get("/health").json()["n_items"] == 200
    answer = lstm_client.post("/reload", json={"ckpt_path": str(small_checkpoint(tmp_path / "small.ckpt", 50))})
    assert answer.status_code == 200 and answer.json()["n_items"] == 50
    health = lstm_client.get("/health").json()
    assert (health["n_items"], health["max_k"], health["model_version"]) == (50, 50, 2)
    assert lstm_client.post("/recommend", json={"items": [1000], "k": 51}).status_code == 422
    assert len(lstm_client.post("/recommend", json={"items": [1000], "k": 50}).json()["items"]) == 50


@pytest.mark.alone
def test_loading_runs_beside_the_model_in_service(models, monkeypatch):
    """While a reload is loading, /health and /recommend answer at once, from the old model; then the new one."""
    loading, release = threading.Event(), threading.Event()
    load = Recommender.from_checkpoint

    def slow_load(path, device="cpu"):
        loading.set()
        assert release.wait(30)
        return load(path, device)

    session = sessions_of(models["lstm"], 1)[0]
    expected = {name: expected_answers(ckpt, [session])[0] for name, ckpt in models.items()}
    with serving(create_app(LiveModel.from_checkpoint(models["lstm"]), reload=True)) as url:
        monkeypatch.setattr(live_module.Recommender, "from_checkpoint", staticmethod(slow_load))
        reloaded: list[httpx.Response] = []
        admin = threading.Thread(
            target=lambda: reloaded.append(
                httpx.post(f"{url}/reload", json={"ckpt_path": models["ensemble"]}, timeout=60)
            )
        )
        admin.start()
        assert loading.wait(30)
        for _ in range(5):
            start = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=5).json()["model_version"] == 1
            answer = httpx.post(f"{url}/recommend", json={"items": session, "k": 10}, timeout=5)
            assert answer.json() == expected["lstm"] and time.perf_counter() - start < 2
        release.set()
        admin.join(timeout=60)
        assert reloaded[0].status_code == 200
        answer = httpx.post(f"{url}/recommend", json={"items": session, "k": 10}, timeout=5)
        assert answer.json() == expected["ensemble"] and answer.headers[MODEL_VERSION] == "2"
