"""The HTTP service under hostile input: non-finite numbers, huge bodies, long ids, idle and half-sent connections, and
generated bodies; it answers 4xx with short errors, never 500, and /health stays fast. A small untrained model
suffices (no training), and the real server runs in a thread on a loopback port."""

import json
import logging
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import CONF, ROOT, serving
from lstm_rec import Recommender
from lstm_rec.checkpoint import TrainedModel, write_entry
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.model import SessionLSTM, build_network
from lstm_rec.serving.http import MAX_UNKNOWN_ECHO, create_app, free_port, wait_until_up
from lstm_rec.serving.server import server_config

N_ITEMS = 50
KNOWN = list(range(1000, 1000 + N_ITEMS))
JSON = {"content-type": "application/json"}


def tiny_recommender() -> Recommender:
    torch.manual_seed(0)
    index = ItemIndex(np.array(KNOWN), np.arange(1, N_ITEMS + 1))
    return Recommender(TrainedModel(SessionLSTM(N_ITEMS, embedding_dim=8, hidden=8), index, None, 0.0))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(tiny_recommender(), recent_clicks=True), raise_server_exceptions=False) as client:
        yield client


def post(client: TestClient, path: str, body: str | bytes) -> httpx.Response:
    return client.post(path, content=body, headers=JSON)


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("/recommend", '{"items": [NaN]}', "NaN is not a JSON number: send a finite number"),
        ("/recommend", '{"items": [1000], "k": Infinity}', "Infinity is not a JSON number: send a finite number"),
        ("/recommend", '{"items": [1e400]}', "1e400 is beyond the range of a finite number"),
        (
            "/recent_clicks",
            '{"items": [1000], "weight": -Infinity}',
            "-Infinity is not a JSON number: send a finite number",
        ),
        ("/recent_clicks", '{"items": [1000], "weight": 1E+999}', "1E+999 is beyond the range of a finite number"),
    ],
)
def test_non_finite_numbers_get_422_not_500(client, path, body, problem):
    answer = post(client, path, body)
    assert answer.status_code == 422
    expected = {
        "type": "json_invalid",
        "loc": ["body"],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": problem},
    }
    assert answer.json() == {"detail": [expected]}
    assert client.post("/recommend", json={"items": [1000]}).status_code == 200


def test_recent_clicks_weight_is_bounded():
    rec = tiny_recommender()
    live = TestClient(create_app(rec, recent_clicks=True, max_recent_weight=10), raise_server_exceptions=False)
    answer = post(live, "/recent_clicks", '{"items": [1000], "weight": 1e308}')
    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        {
            "type": "less_than_equal",
            "loc": ["body", "weight"],
            "msg": "Input should be less than or equal to 10",
            "input": 1e308,
            "ctx": {"le": 10},
        }
    ]
    assert rec.prior is None  # the refused request changed nothing
    answer = post(live, "/recent_clicks", '{"items": [1000, 1000, 1001], "weight": 10}')
    assert answer.json() == {"clicks": 3, "items": 2, "weight": 10.0, "unknown": []}
    assert rec.prior.scores[:3].tolist() == pytest.approx([10 * np.log(3), 10 * np.log(2), 0.0])


def test_long_inputs_are_never_echoed_in_full(client, caplog):
    long_id, long_key = "x" * 100_000, "k" * 100_000
    with caplog.at_level(logging.INFO):
        answer = client.post("/recommend", json={"items": [1000, long_id]})
        assert answer.status_code == 422 and len(answer.content) < 1000
        too_long = [e for e in answer.json()["detail"] if e["type"] == "string_too_long"]
        assert too_long == [
            {
                "type": "string_too_long",
                "loc": ["body", "items", 1, "constrained-str"],
                "msg": "String should have at most 128 characters",
                "input": "x" * 64 + "…",
                "ctx": {"max_length": 128},
            }
        ]
        answer = client.post("/recommend", json={"items": [1000], long_key: 1})
        assert answer.status_code == 422 and len(answer.content) < 1000
        assert answer.json()["detail"][0]["loc"] == ["body", "k" * 64 + "…"]
    assert all(len(record.getMessage()) < 2000 for record in caplog.records)


def test_whole_body_and_many_errors_are_summarised(client):
    answer = post(client, "/recommend", json.dumps(list(range(20_000))))
    assert answer.status_code == 422 and answer.json()["detail"][0]["input"] == "list of 20000"
    answer = client.post("/recommend", json={"items": [1.5] * 20_000})  # fails fast at the first bad click
    locs = [error["loc"] for error in answer.json()["detail"]]
    assert answer.status_code == 422 and locs == [["body", "items", 0, f"constrained-{t}"] for t in ("int", "str")]
    answer = post(client, "/recommend", "{" + ", ".join(f'"extra{i}": 0' for i in range(10_000)) + ', "items": []}')
    assert answer.status_code == 422 and len(answer.json()["detail"]) == 10 and len(answer.content) < 3000


def test_answers_list_a_bounded_number_of_unknown_ids():
    live = TestClient(create_app(tiny_recommender(), recent_clicks=True))
    clicks = [f"u{i}" for i in range(5_000)] + [1000]
    answer = live.post("/recent_clicks", json={"items": clicks})
    assert answer.json() == {"clicks": 1, "items": 1, "weight": 0.0, "unknown": clicks[:MAX_UNKNOWN_ECHO]}


def test_bodies_over_the_limit_get_413_before_parsing():
    limited = TestClient(create_app(tiny_recommender(), max_body_bytes=1000), raise_server_exceptions=False)
    fits = json.dumps({"items": [1000], "k": 3}).ljust(1000)
    assert post(limited, "/recommend", fits).status_code == 200
    expected = {"detail": "the request body is over 1000 bytes (max_body_bytes): send less"}
    not_json = "x" * 1001  # a 422 would mean that it was parsed
    chunks = (b"x" * 100 for _ in range(11))  # no content-length: counted as it arrives
    for body in (not_json, chunks):
        answer = post(limited, "/recommend", body)
        assert answer.status_code == 413 and answer.json() == expected and answer.headers["connection"] == "close"
    assert limited.get("/health").status_code == 200


def test_non_json_bodies_get_415(client):
    answer = client.post("/recommend", content='{"items": [1000]}', headers={"content-type": "text/plain"})
    assert answer.status_code == 415
    expected = "/recommend takes a JSON body: send content-type: application/json, not 'text/plain'"
    assert answer.json() == {"detail": expected}


def test_api_docs_are_off_unless_asked_for():
    rec = tiny_recommender()
    default, documented = TestClient(create_app(rec)), TestClient(create_app(rec, api_docs=True))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert default.get(path).status_code == 404
        assert documented.get(path).status_code == 200
    body = documented.get("/openapi.json").json()["paths"]["/recommend"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["items"]["maxItems"] == 200


def test_bad_limits_are_refused_with_their_name():
    with pytest.raises(ValueError, match=r"^the service's max_body_bytes must be a positive number, got 0$"):
        create_app(tiny_recommender(), max_body_bytes=0)
    with pytest.raises(ValueError, match=r"^the server's request_timeout must be a positive number of seconds, got 0$"):
        server_config(create_app(tiny_recommender()), request_timeout=0)


def largest_recent_clicks_body(max_body_bytes: int) -> bytes:
    """A valid /recent_clicks body of max_body_bytes bytes exactly."""
    head, clicks = b'{"items": [', ",".join(map(str, KNOWN)).encode()
    body = head + b",".join([clicks] * (max_body_bytes // len(clicks)))
    return (body[: body.rindex(b",", 0, max_body_bytes - 2)] + b"]}").ljust(max_body_bytes)


def write_tiny_checkpoint(path: Path) -> Path:
    """tiny_recommender's network as a checkpoint that scripts/serve.py can load."""
    torch.manual_seed(0)
    settings = {"embedding_dim": 8, "hidden": 8}
    checkpoint = {"state_dict": {f"net.{k}": v for k, v in build_network(N_ITEMS, settings).state_dict().items()}}
    write_entry(checkpoint, ItemIndex(np.array(KNOWN), np.arange(1, N_ITEMS + 1)), settings, None, 0.0)
    torch.save(checkpoint, path)
    return path


def health_latencies(url: str, bodies: list[bytes], probes: int = 100) -> tuple[list[float], list[int]]:
    """Seconds that each of `probes` GET /health takes while another client keeps posting `bodies` to
    /recent_clicks, and the status codes that those posts got."""
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(timeout=60) as sender:
            while not stop.is_set():
                statuses.extend(
                    sender.post(f"{url}/recent_clicks", content=b, headers=JSON).status_code for b in bodies
                )

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    with httpx.Client(timeout=60) as prober:
        while len(latencies) < probes:
            start = time.perf_counter()
            assert prober.get(f"{url}/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
    stop.set()
    sender.join(timeout=60)
    return latencies, statuses


@pytest.mark.slow
@pytest.mark.alone
def test_health_stays_fast_while_the_largest_requests_are_handled(tmp_path):
    """scripts/serve.py with conf/serve.yaml's limits: bodies of max_body_bytes are parsed and the clicks counted,
    20 MB ones are refused, and meanwhile /health answers in well under 100 ms."""
    limit = OmegaConf.load(CONF / "serve.yaml").max_body_bytes
    largest, oversized = largest_recent_clicks_body(limit), b'{"items": [' + b"1000," * 4_000_000 + b"1000]}"
    port, checkpoint = free_port(), write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    command = [sys.executable, "scripts/serve.py", f"ckpt_path={checkpoint}", f"port={port}", "recent_clicks=true"]
    server = subprocess.Popen([*command, "log_level=warning", f"hydra.run.dir={tmp_path}"], cwd=ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server)
        latencies, statuses = health_latencies(f"http://127.0.0.1:{port}", [largest, oversized])
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies.sort()
    posts = f"{statuses.count(200)} posts of {limit} bytes (200), {statuses.count(413)} of 20 MB (413)"
    print(
        f"/health ms: median {1000 * statistics.median(latencies):.1f}, p95 {1000 * latencies[94]:.1f}, "
        f"max {1000 * latencies[-1]:.1f} during {posts}"
    )
    # A parse on the event loop blocks it for seconds (a 20 MB body); the margins are for a busy 2-core machine.
    assert statistics.median(latencies) < 0.05 and latencies[94] < 0.1 and latencies[-1] < 0.25, latencies[-5:]
    assert statuses.count(200) >= 3 and statuses.count(413) >= 3 and set(statuses) == {200, 413}


def closed_after(address: tuple[str, int], sent: bytes, patience: float = 10.0) -> float:
    """Seconds until the server closes a connection on which only `sent` was sent."""
    with socket.create_connection(address, timeout=patience) as connection:
        start = time.monotonic()
        connection.sendall(sent)
        while connection.recv(65536):  # whatever comes back, then the end
            pass
        return time.monotonic() - start


@pytest.mark.alone
def test_idle_and_half_sent_connections_are_closed():
    app = create_app(tiny_recommender())
    with serving(app, request_timeout=1, timeout_keep_alive=1) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        head = b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        whole = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
        for sent in (b"", head, head + b"content-length: 100\r\n\r\n" + b'{"items": [', whole):
            assert 0.5 < closed_after(address, sent) < 3, sent


def test_half_sent_headers_and_open_connections_are_bounded():
    app = create_app(tiny_recommender())
    with serving(app, h11_max_incomplete_event_size=2000, max_connections=3) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        with socket.create_connection(address, timeout=5) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 3000)  # no end of headers
            assert connection.recv(65536).startswith(b"HTTP/1.1 400 ")
        idle = [socket.create_connection(address, timeout=5) for _ in range(3)]
        time.sleep(0.2)
        try:
            assert httpx.get(f"{url}/health", timeout=5).status_code == 503
        finally:
            for connection in idle:
                connection.close()


def test_access_log_lines_are_short():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    with serving(create_app(tiny_recommender()), log_level="info") as url:
        logging.getLogger("uvicorn.access").addHandler(handler)
        try:
            assert httpx.get(f"{url}/{'p' * 10_000}", timeout=10).status_code == 404
        finally:
            logging.getLogger("uvicorn.access").removeHandler(handler)
    assert len(records) == 1 and len(records[0].getMessage()) < 200 and "404" in records[0].getMessage()


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=200)
    | st.sampled_from([*KNOWN[:5], 10**30, -(2**63), 2**63])
)
keys = st.text(max_size=8)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=8
)
item_lists = st.lists(st.sampled_from(KNOWN) | scalars, max_size=40) | json_values
bodies = st.fixed_dictionaries(
    {"items": item_lists},
    optional={"k": st.integers(-5, 200) | json_values, "exclude_seen": json_values, "weight": json_values},
) | st.dictionaries(keys, json_values, max_size=4)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[TestClient]:
    app = create_app(tiny_recommender(), max_k=30, recent_clicks=True, max_body_bytes=4000)
    with TestClient(app, raise_server_exceptions=False) as client:  # one event loop for all requests: fast
        yield client


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/recommend", "/recent_clicks"]),
    body=bodies.map(lambda body: json.dumps(body).encode()) | st.binary(max_size=300),
    content_type=st.sampled_from(["application/json", "application/vnd.api+json", "text/plain", ""]),
)
def test_generated_requests_never_get_500_and_the_service_keeps_serving(fuzzed, path, body, content_type):
    answer = fuzzed.post(path, content=body, headers={"content-type": content_type})
    assert answer.status_code in {200, 413, 415, 422}, answer.text[:500]
    assert len(answer.content) < 16_000
    if answer.status_code == 200 and path == "/recommend":
        assert all(np.isfinite(answer.json()["scores"]))
    assert fuzzed.get("/health").json()["status"] == "ok"
