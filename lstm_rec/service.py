"""HTTP service: POST /recommend answers the top k for a session, GET /health says the model is up."""

# No `from __future__ import annotations`: FastAPI reads the request model of the endpoint, a class
# local to create_app, from the annotation at run time.
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
