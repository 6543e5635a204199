"""HTTP service: POST /recommend answers the top k for a session, GET /health says the model is up, and
POST /recent_clicks (when switched on) refreshes the recent-popularity prior from live clicks.

Every request is bounded before it is parsed (max_body_bytes: 413), bodies are parsed in the thread pool so that
the event loop keeps answering, and no answer or error repeats more than a short prefix of what was sent
(lstm_rec.serving.bodies)."""

# No `from __future__ import annotations`: the request models, classes built inside functions, take their limits
# (local variables) in annotations that must be evaluated when the class is built.
import socket
import subprocess
import time
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from lstm_rec.serving.bodies import BodyLimit, read_body, validation_error_answer
from lstm_rec.serving.recommender import Recommender

ItemId = StrictInt | StrictStr
INT64 = (-(2**63), 2**63 - 1)  # the range of integer item ids (an item index holds int64 ids)
MAX_UNKNOWN_ECHO = 100  # unknown ids that a /recent_clicks answer lists, the first ones sent


class RecommendResponse(BaseModel):
    items: list[ItemId]
    scores: list[float]
    fallback: bool = Field(description="true when no item of the session is known: the items are the most popular")
    unknown: list[ItemId] = Field(description="item ids of the request that the model does not know (skipped)")


class RecentClicksResponse(BaseModel):
    clicks: int = Field(description="clicks that counted: those on items the model knows")
    items: int = Field(description="distinct known items among them")
    weight: float = Field(description="the prior's weight now in use")
    unknown: list[ItemId] = Field(
        description=f"item ids of the request that the model does not know (not counted), the first {MAX_UNKNOWN_ECHO}"
    )


def create_app(
    rec: Recommender,
    max_items: int = 200,
    max_k: int = 100,
    recent_clicks: bool = False,
    max_recent_clicks: int = 10_000_000,
    max_recent_weight: float = 10.0,
    max_id_chars: int = 128,
    max_body_bytes: int = 262_144,
    api_docs: bool = False,
) -> FastAPI:
    """The service for one Recommender; requests with more than `max_items` clicks, k outside 1..max_k or an id
    longer than `max_id_chars` get 422, bodies over `max_body_bytes` get 413 before they are parsed.

    With `recent_clicks`, POST /recent_clicks {"items": [...], "weight": w} replaces the recent-popularity prior
    (Recommender.set_recent_clicks) with one from those clicks, at most `max_recent_clicks` of them, w in
    0..max_recent_weight; it changes every later answer, so it is off unless asked for. `api_docs` serves /docs,
    /redoc and /openapi.json (the first two load scripts from a CDN).
    """
    _check_limits(
        max_items=max_items,
        max_k=max_k,
        max_recent_clicks=max_recent_clicks,
        max_recent_weight=max_recent_weight,
        max_id_chars=max_id_chars,
        max_body_bytes=max_body_bytes,
    )
    app = _guarded_app(max_body_bytes, api_docs)
    limits = {"max_items": max_items, "max_k": min(max_k, rec.n_items), "recent_clicks": recent_clicks}

    @app.get("/health")
    async def health() -> dict[str, object]:  # on the event loop: no hop to the thread pool
        return {"status": "ok", "n_items": rec.n_items, **limits}

    _add_recommend(app, rec, _recommend_request(max_items, min(max_k, rec.n_items), max_id_chars))
    if recent_clicks:
        _add_recent_clicks(app, rec, _recent_clicks_request(max_recent_clicks, max_recent_weight, max_id_chars))
    return app


def _guarded_app(max_body_bytes: int, api_docs: bool) -> FastAPI:
    """An app with no route yet: bodies bounded, short 422s, and the API docs only when asked for."""
    docs = {} if api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="lstm_rec", description="Next-item recommendations from a trained session LSTM", **docs)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error_answer)
    return app


def _check_limits(**limits: float) -> None:
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"the service's {name} must be a positive number, got {value!r}")


def _request_id(max_id_chars: int) -> Any:
    """An item id of a request: an int64 or a string of at most `max_id_chars` characters."""
    integer = Annotated[StrictInt, Field(ge=INT64[0], le=INT64[1])]
    return integer | Annotated[StrictStr, Field(max_length=max_id_chars)]


def _recommend_request(max_items: int, max_k: int, max_id_chars: int) -> type[BaseModel]:
    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[
            list[_request_id(max_id_chars)],
            Field(max_length=max_items, fail_fast=True, description="the session's clicks, oldest first"),
        ]
        k: Annotated[StrictInt, Field(ge=1, le=max_k)] = 20
        exclude_seen: StrictBool = False

    return RecommendRequest


def _recent_clicks_request(max_recent_clicks: int, max_weight: float, max_id_chars: int) -> type[BaseModel]:
    class RecentClicksRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[
            list[_request_id(max_id_chars)],
            Field(
                max_length=max_recent_clicks,
                fail_fast=True,
                description="recent clicks of all sessions, e.g. the last hours'",
            ),
        ]
        weight: Annotated[
            float | None,
            Field(strict=True, ge=0, le=max_weight, description="the prior's weight; null: the model's own"),
        ] = None

    return RecentClicksRequest


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI entry of a JSON body that the endpoint reads itself (read_body), so that /docs still shows it."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _add_recommend(app: FastAPI, rec: Recommender, model: type[BaseModel]) -> None:
    """POST /recommend: the top k after the session sent."""

    @app.post("/recommend", openapi_extra=_json_body(model))
    async def recommend(request: Request) -> RecommendResponse:
        body = await read_body(request, model)
        top = await run_in_threadpool(rec.recommend, body.items, body.k, body.exclude_seen)
        items, scores = [item for item, _ in top], [score for _, score in top]
        return RecommendResponse(items=items, scores=scores, fallback=top.fallback, unknown=top.unknown)


def _add_recent_clicks(app: FastAPI, rec: Recommender, model: type[BaseModel]) -> None:
    """POST /recent_clicks: replace the recent-popularity prior with one from the clicks sent."""

    def refresh(items: list[int | str], weight: float | None) -> RecentClicksResponse:
        unknown = rec.set_recent_clicks(items, weight)  # every unknown click, in order
        known_items = set(rec.item_index.lookup(items).tolist()) - {0}  # ids in the index's type: "42" is 42
        weight = rec.recent_weight if weight is None else float(weight)
        clicks = len(items) - len(unknown)
        return RecentClicksResponse(
            clicks=clicks, items=len(known_items), weight=weight, unknown=unknown[:MAX_UNKNOWN_ECHO]
        )

    @app.post("/recent_clicks", openapi_extra=_json_body(model))
    async def set_recent_clicks(request: Request) -> RecentClicksResponse:
        body = await read_body(request, model)
        return await run_in_threadpool(refresh, body.items, body.weight)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for tests and benchmarks on loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    """Poll `url`/health until the server process answers; raise if it dies or `seconds` pass."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not come up within {seconds} s")
