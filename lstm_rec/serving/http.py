"""HTTP service: POST /recommend answers the top k for a session, GET /health says the model is up, and
POST /recent_clicks (when switched on) refreshes the recent-popularity prior from live clicks."""

# No `from __future__ import annotations`: FastAPI reads the request model of the endpoint, a class
# local to create_app, from the annotation at run time.
import socket
import subprocess
import time
from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from lstm_rec.serving.recommender import Recommender

ItemId = StrictInt | StrictStr


class RecommendResponse(BaseModel):
    items: list[ItemId]
    scores: list[float]
    fallback: bool = Field(description="true when no item of the session is known: the items are the most popular")
    unknown: list[ItemId] = Field(description="item ids of the request that the model does not know (skipped)")


class RecentClicksResponse(BaseModel):
    clicks: int = Field(description="clicks that counted: those on items the model knows")
    items: int = Field(description="distinct known items among them")
    weight: float = Field(description="the prior's weight now in use")
    unknown: list[ItemId] = Field(description="item ids of the request that the model does not know (not counted)")


def create_app(
    rec: Recommender,
    max_items: int = 200,
    max_k: int = 100,
    recent_clicks: bool = False,
    max_recent_clicks: int = 10_000_000,
) -> FastAPI:
    """The service for one Recommender; requests with more than `max_items` clicks or k outside 1..max_k get 422.

    With `recent_clicks`, POST /recent_clicks {"items": [...], "weight": w} replaces the recent-popularity prior
    (Recommender.set_recent_clicks) with one from those clicks, at most `max_recent_clicks` of them; it changes
    every later answer, so it is off unless asked for.
    """
    RecommendRequest = _recommend_request(max_items, min(max_k, rec.n_items))
    app = FastAPI(title="lstm_rec", description="Next-item recommendations from a trained session LSTM")

    @app.get("/health")
    def health() -> dict[str, object]:
        limits = {"max_items": max_items, "max_k": min(max_k, rec.n_items), "recent_clicks": recent_clicks}
        return {"status": "ok", "n_items": rec.n_items, **limits}

    @app.post("/recommend")
    def recommend(request: RecommendRequest) -> RecommendResponse:
        top = rec.recommend(request.items, request.k, request.exclude_seen)
        items, scores = [item for item, _ in top], [score for _, score in top]
        return RecommendResponse(items=items, scores=scores, fallback=top.fallback, unknown=top.unknown)

    if recent_clicks:
        _add_recent_clicks(app, rec, max_recent_clicks)
    return app


def _recommend_request(max_items: int, max_k: int) -> type[BaseModel]:
    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[list[ItemId], Field(max_length=max_items, description="the session's clicks, oldest first")]
        k: Annotated[StrictInt, Field(ge=1, le=max_k)] = 20
        exclude_seen: StrictBool = False

    return RecommendRequest


def _add_recent_clicks(app: FastAPI, rec: Recommender, max_recent_clicks: int) -> None:
    """POST /recent_clicks: replace the recent-popularity prior with one from the clicks sent."""

    class RecentClicksRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[
            list[ItemId],
            Field(max_length=max_recent_clicks, description="recent clicks of all sessions, e.g. the last hours'"),
        ]
        weight: Annotated[
            StrictFloat | StrictInt | None, Field(ge=0, description="the prior's weight; null: the model's own")
        ] = None

    @app.post("/recent_clicks")
    def set_recent_clicks(request: RecentClicksRequest) -> RecentClicksResponse:
        unknown = rec.set_recent_clicks(request.items, request.weight)  # every unknown click, in order
        known_items = set(map(_key, request.items)) - set(map(_key, unknown))
        weight = rec.recent_weight if request.weight is None else float(request.weight)
        clicks = len(request.items) - len(unknown)
        return RecentClicksResponse(clicks=clicks, items=len(known_items), weight=weight, unknown=unknown)


def _key(item: int | str) -> tuple[type, int | str]:
    """An id that keeps 1 and "1" apart."""
    return type(item), item


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
