"""Request bodies of the HTTP service: strict JSON parsed off the event loop, and errors that repeat at most a short
prefix of what was sent."""

import json
import math
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ECHO_CHARS = 64  # the longest piece of a request that an answer, an error or a log line repeats
MAX_ERRORS = 10  # errors listed in one 422
MAX_MESSAGE_CHARS = 200
CLOSE = {"connection": "close"}  # on a 413: uvicorn then closes the connection instead of reading the rest

Model = TypeVar("Model", bound=BaseModel)


class BodyLimit:
    """ASGI middleware: a request whose body is over `max_bytes` gets 413, and its connection is closed (so that the
    rest is not read), before any route parses it: at once when its Content-Length says so, else as soon as the bytes
    received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._too_large()}, 413, CLOSE)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._too_large(), CLOSE)
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> str:
        return f"the request body is over {self.max_bytes} bytes (max_body_bytes): send less"


async def read_body(request: Request, model: type[Model], optional: bool = False) -> Model:
    """The request's JSON body as a `model`, parsed and validated in the thread pool so that the event loop (and
    /health) keeps answering meanwhile; BodyLimit bounds its size before. With `optional`, a request that has no
    body at all, whatever its content type, is `model()`."""
    if optional and request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return model()
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (media_type == "application/json" or media_type.endswith("+json")):
        raise HTTPException(
            415, f"{request.url.path} takes a JSON body: send content-type: application/json, not {short(media_type)!r}"
        )
    try:
        body = await request.body()
    except ClientDisconnect:  # e.g. closed for sending too slowly (lstm_rec.serving.server); nobody reads the answer
        raise HTTPException(400, "the client left before sending its whole body") from None
    return await run_in_threadpool(parse_body, body, model)


def parse_body(body: bytes, model: type[Model]) -> Model:
    """`body` as a `model`; RequestValidationError (a 422) for JSON that is malformed or not a `model`.

    NaN, Infinity and numbers beyond the float range (1e400) are not JSON numbers: they are refused while parsing.
    """
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:  # also bad UTF-8, integers past 4300 digits, deep nesting
        raise RequestValidationError([_json_invalid(error)]) from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        errors = error.errors(include_url=False)[:MAX_ERRORS]
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _json_invalid(error: ValueError | RecursionError) -> dict[str, Any]:
    """FastAPI's own error for a body that is not JSON, with the reason."""
    if isinstance(error, json.JSONDecodeError):
        loc, reason = ("body", error.pos), error.msg
    else:
        loc, reason = ("body",), str(error) or "nested too deep"
    return {"type": "json_invalid", "loc": loc, "msg": "JSON decode error", "input": {}, "ctx": {"error": reason}}


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number: send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{short(text)} is beyond the range of a finite number")
    return value


async def validation_error_answer(request: Request, error: RequestValidationError) -> JSONResponse:
    """A 422 that says what is wrong, like FastAPI's own, but with at most MAX_ERRORS errors, each repeating at most
    ECHO_CHARS characters of any input, and with no non-finite number (which JSON cannot carry)."""
    detail = [_short_error(e) for e in list(error.errors())[:MAX_ERRORS]]
    return JSONResponse({"detail": detail}, status_code=422)


def _short_error(error: dict[str, Any]) -> dict[str, Any]:
    short_error = {
        "type": short(error.get("type")),
        "loc": [part if isinstance(part, int) else short(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", ""))[:MAX_MESSAGE_CHARS],
        "input": short(error.get("input")),
    }
    if error.get("ctx"):
        short_error["ctx"] = {str(key)[:ECHO_CHARS]: short(value) for key, value in list(error["ctx"].items())[:8]}
    return short_error


def short(value: Any, depth: int = 0) -> Any:
    """`value` as JSON can carry it, cut short: a string to ECHO_CHARS characters (then "…"), a container to its
    first two levels of at most 4 entries each (a bigger one to its size, e.g. "list of 20000")."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _cut(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray):
        return _cut(bytes(value[: ECHO_CHARS + 1]).decode("utf-8", errors="replace"))
    if isinstance(value, list | tuple | dict) and len(value) <= 4 and depth < 2:
        if isinstance(value, dict):
            return {_cut(str(key)): short(item, depth + 1) for key, item in value.items()}
        return [short(item, depth + 1) for item in value]
    if isinstance(value, list | tuple | dict | set):
        return f"{type(value).__name__} of {len(value)}"
    return _cut(str(value))


def _cut(text: str) -> str:
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"
