"""HTTP service: POST /recommend answers the top k for a session, GET /health says the model is up."""

# No `from __future__ import annotations`: FastAPI reads the request model of the endpoint, a class
# local to create_app, from the annotation at run time.
import socket
import subprocess
import time
from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from lstm_rec.recommender import Recommender

ItemId = StrictInt | StrictStr


class RecommendResponse(BaseModel):
    items: list[ItemId]
    scores: list[float]
    fallback: bool = Field(description="true when no item of the session is known: the items are the most popular")
    unknown: list[ItemId] = Field(description="item ids of the request that the model does not know (skipped)")


def create_app(rec: Recommender, max_items: int = 200, max_k: int = 100) -> FastAPI:
    """The service for one Recommender; requests with more than `max_items` clicks or k outside 1..max_k get 422."""

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[list[ItemId], Field(max_length=max_items, description="the session's clicks, oldest first")]
        k: Annotated[StrictInt, Field(ge=1, le=min(max_k, rec.n_items))] = 20
        exclude_seen: StrictBool = False

    app = FastAPI(title="lstm_rec", description="Next-item recommendations from a trained session LSTM")

    @app.get("/health")
    def health() -> dict[str, object]:
        return {"status": "ok", "n_items": rec.n_items, "max_items": max_items, "max_k": min(max_k, rec.n_items)}

    @app.post("/recommend")
    def recommend(request: RecommendRequest) -> RecommendResponse:
        top = rec.recommend(request.items, request.k, request.exclude_seen)
        return RecommendResponse(
            items=[item for item, _ in top],
            scores=[score for _, score in top],
            fallback=top.fallback,
            unknown=top.unknown,
        )

    return app


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
