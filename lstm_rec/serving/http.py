"""HTTP service: POST /recommend answers the top k for a session, GET /health says the model is up, POST /recent_clicks
(when switched on) refreshes the recent-popularity prior from live clicks, and POST /reload (when switched on) puts
another checkpoint in service without a restart (lstm_rec.serving.live). Concurrent /recommend requests are scored
together (lstm_rec.serving.batching).

Every request is bounded before it is parsed (max_body_bytes: 413), bodies are parsed in the thread pool so that
the event loop keeps answering, and no answer or error repeats more than a short prefix of what was sent
(lstm_rec.serving.bodies)."""

# No `from __future__ import annotations`: the request models, classes built inside functions, take their limits
# (local variables) in annotations that must be evaluated when the class is built.
import functools
import logging
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from lstm_rec.checkpoint import CheckpointError
from lstm_rec.serving.batching import Batcher
from lstm_rec.serving.bodies import ECHO_CHARS, BodyLimit, read_body, validation_error_answer
from lstm_rec.serving.live import LiveModel
from lstm_rec.serving.recommender import Query, Recommender

log = logging.getLogger(__name__)

ItemId = StrictInt | StrictStr
INT64 = (-(2**63), 2**63 - 1)  # the range of integer item ids (an item index holds int64 ids)
MAX_UNKNOWN_ECHO = 100  # unknown ids that a /recent_clicks answer lists, the first ones sent
MAX_PATH_CHARS = 4096  # the longest ckpt_path a /reload request may send (Linux's PATH_MAX)
MAX_RELOAD_ERROR_CHARS = 600  # a failed reload's reason, cut there (a checkpoint's problem can take a few lines)
MODEL_VERSION = "x-model-version"  # the header that names the model of a /recommend answer (1, then 2 per reload...)


class RecommendResponse(BaseModel):
    items: list[ItemId]
    scores: list[float]
    fallback: bool = Field(description="true when no item of the session is known: the items are the most popular")
    unknown: list[ItemId] = Field(description="item ids of the request that the model does not know (skipped)")


class ReloadResponse(BaseModel):
    model_version: int = Field(description="the version of the model now in service: 1 at start, one more per reload")
    n_items: int
    ckpt_path: str = Field(description=f"the checkpoint now in service, its last {ECHO_CHARS} characters at most")
    seconds: float = Field(description="time to load and check it")


class RecentClicksResponse(BaseModel):
    clicks: int = Field(description="clicks that counted: those on items the model knows")
    items: int = Field(description="distinct known items among them")
    weight: float = Field(description="the prior's weight now in use")
    unknown: list[ItemId] = Field(
        description=f"item ids of the request that the model does not know (not counted), the first {MAX_UNKNOWN_ECHO}"
    )


def create_app(
    model: Recommender | LiveModel,
    max_items: int = 200,
    max_k: int = 100,
    recent_clicks: bool = False,
    max_recent_clicks: int = 10_000_000,
    max_recent_weight: float = 10.0,
    max_id_chars: int = 128,
    max_body_bytes: int = 262_144,
    api_docs: bool = False,
    reload: bool = False,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
) -> FastAPI:
    """The service for one model (a Recommender, or a LiveModel that reloads can replace); requests with more than
    `max_items` clicks, k outside 1..max_k or an id longer than `max_id_chars` get 422, bodies over `max_body_bytes`
    get 413 before they are parsed.

    Concurrent /recommend requests are scored together, at most `max_batch` at once, a batch waiting at most
    `max_wait_ms` for more (Batcher; max_batch=1: each alone). With `recent_clicks`, POST /recent_clicks {"items":
    [...], "weight": w} replaces the recent-popularity prior (Recommender.set_recent_clicks) with one from those
    clicks, at most `max_recent_clicks` of them, w in 0..max_recent_weight. With `reload`, POST /reload {"ckpt_path":
    PATH} puts that checkpoint in service (LiveModel.reload). Both change every later answer, so they are off unless
    asked for. `api_docs` serves /docs, /redoc and /openapi.json (the first two load scripts from a CDN).
    """
    _check_limits(
        max_items=max_items,
        max_k=max_k,
        max_recent_clicks=max_recent_clicks,
        max_recent_weight=max_recent_weight,
        max_id_chars=max_id_chars,
        max_body_bytes=max_body_bytes,
    )
    batcher = _batcher(max_batch, max_wait_ms)
    live = model if isinstance(model, LiveModel) else LiveModel(model)
    app = _guarded_app(max_body_bytes, api_docs)
    switches = {"recent_clicks": recent_clicks, "reload": reload}

    @app.get("/health")
    async def health() -> dict[str, object]:  # on the event loop: no hop to the thread pool
        served = live.current
        limits = {"max_items": max_items, "max_k": min(max_k, served.rec.n_items), **switches}
        return {"status": "ok", "n_items": served.rec.n_items, **limits, "model_version": served.version}

    # The largest k is the model's number of items at most, which a reload may change.
    requests = functools.lru_cache(maxsize=8)(lambda n: _recommend_request(max_items, min(max_k, n), max_id_chars))
    _add_recommend(app, live, batcher, requests)
    if recent_clicks:
        _add_recent_clicks(app, live, _recent_clicks_request(max_recent_clicks, max_recent_weight, max_id_chars))
    if reload:
        _add_reload(app, live, _reload_request())
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


def _batcher(max_batch: int, max_wait_ms: float) -> Batcher:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"the service's max_batch must be a whole number of requests, 1 or more, got {max_batch!r}")
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int | float) or not 0 <= max_wait_ms <= 1000:
        raise ValueError(f"the service's max_wait_ms must be 0 to 1000 milliseconds, got {max_wait_ms!r}")
    return Batcher(max_batch, max_wait_ms / 1000)


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


def _reload_request() -> type[BaseModel]:
    class ReloadRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ckpt_path: Annotated[
            StrictStr | None,
            Field(
                max_length=MAX_PATH_CHARS,
                description="a checkpoint file on the server; null (or no body): the one the service started with",
            ),
        ] = None

    return ReloadRequest


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


def _add_recommend(app: FastAPI, live: LiveModel, batcher: Batcher, requests: Callable[[int], type[BaseModel]]) -> None:
    """POST /recommend: the top k after the session sent, from one model (named by the x-model-version header)."""

    @app.post("/recommend", openapi_extra=_json_body(requests(live.current.rec.n_items)))
    async def recommend(request: Request, response: Response) -> RecommendResponse:
        served = live.current  # this request's model from start to end, whatever a reload swaps in meanwhile
        body = await read_body(request, requests(served.rec.n_items))
        top = await batcher.recommend(served.rec, Query(body.items, body.k, body.exclude_seen))
        response.headers[MODEL_VERSION] = str(served.version)
        items, scores = [item for item, _ in top], [score for _, score in top]
        return RecommendResponse(items=items, scores=scores, fallback=top.fallback, unknown=top.unknown)


def _add_recent_clicks(app: FastAPI, live: LiveModel, model: type[BaseModel]) -> None:
    """POST /recent_clicks: replace the recent-popularity prior with one from the clicks sent."""

    def refresh(items: list[int | str], weight: float | None) -> RecentClicksResponse:
        rec, unknown = live.set_recent_clicks(items, weight)  # every unknown click, in order
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


def _add_reload(app: FastAPI, live: LiveModel, model: type[BaseModel]) -> None:
    """POST /reload: load and check a checkpoint in the thread pool, then put it in service; requests being answered
    finish on the model they started with. A checkpoint that fails leaves the model in service, with a 422 that says
    why."""

    @app.post("/reload", openapi_extra=_json_body(model))
    async def reload(request: Request) -> ReloadResponse:
        body = await read_body(request, model, optional=True)
        start = time.perf_counter()
        try:
            served = await run_in_threadpool(live.reload, body.ckpt_path)
        except (CheckpointError, OSError) as error:
            raise HTTPException(422, _reload_failed(error, body.ckpt_path, live)) from None
        except Exception as error:  # a bug, not a bad file; the model in service stays all the same
            log.exception("reloading %s failed", path_tail(body.ckpt_path or ""))
            raise HTTPException(500, _reload_failed(error, body.ckpt_path, live)) from None
        seconds = round(time.perf_counter() - start, 3)
        log.info("model version %d in service: %s (%.2f s)", served.version, served.ckpt_path, seconds)
        return ReloadResponse(
            model_version=served.version,
            n_items=served.rec.n_items,
            ckpt_path=path_tail(served.ckpt_path or ""),
            seconds=seconds,
        )


def _reload_failed(error: Exception, path: str | None, live: LiveModel) -> str:
    """Why a reload failed, repeating at most the last ECHO_CHARS characters of the path sent, and what is still in
    service."""
    reason = str(error) if isinstance(error, CheckpointError | OSError) else f"{type(error).__name__}: {error}"
    if path:
        for spelling in sorted({path, str(Path(path))}, key=len, reverse=True):
            reason = reason.replace(spelling, path_tail(spelling))
    return f"{reason[:MAX_RELOAD_ERROR_CHARS]}; still serving model version {live.current.version}"


def path_tail(path: str) -> str:
    """A path as an answer repeats it: whole up to ECHO_CHARS characters, else "…" and its end (the file's name)."""
    return path if len(path) <= ECHO_CHARS else "…" + path[-(ECHO_CHARS - 1) :]


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
