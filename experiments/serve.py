"""Serve an exported ranker over HTTP (JSON): ``POST /rank``, ``POST /explain``, ``GET /health``.

Usage::

    rankgym serve ranker=outputs/train/RUN/ranker port=8000
    curl -s localhost:8000/rank -H 'content-type: application/json' \\
      -d '{"query": "usb-c charger", "user_history": ["i0042"], "candidates": ["i0007", "i0913"]}'

FastAPI on uvicorn: a standard ASGI stack whose request models (pydantic) validate every field,
reject unknown ones and document themselves at ``/docs``. The process imports the
:class:`~rankgym.agents.ranker.Ranker` only, never torch. Bad input is a 4xx with a one-line
``error``: malformed JSON 400, an oversized body 413, a field of the wrong type or an unknown field
422, a request the ranker refuses (unknown item without a text, too many candidates...) 422;
anything else is a 500 with the error's first line, and the server keeps serving.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import hydra
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from rankgym.agents.ranker import Ranker, RankerError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20


class ItemIn(BaseModel):
    """A candidate the ranker may not know: its id and the text to encode."""

    model_config = ConfigDict(extra="forbid")
    item_id: StrictStr | StrictInt
    text: StrictStr | None = None


class RankIn(BaseModel):
    """One request: a query (null for a recommendation), the history and the candidates."""

    model_config = ConfigDict(extra="forbid")
    query: StrictStr | None = None
    user_history: list[StrictStr | StrictInt | ItemIn] = Field(default_factory=list)
    candidates: list[StrictStr | StrictInt | ItemIn] = Field(min_length=1)
    k: StrictInt | None = Field(default=None, ge=1)
    user_id: StrictStr | None = None

    def as_request(self) -> dict[str, Any]:
        """The :meth:`Ranker.rank_batch` form (items as ids or ``{"item_id", "text"}``)."""
        plain = lambda x: x.model_dump() if isinstance(x, BaseModel) else x  # noqa: E731
        return {
            "query": self.query, "user_history": [plain(x) for x in self.user_history],
            "candidates": [plain(x) for x in self.candidates], "k": self.k,
            "user_id": self.user_id,
        }  # fmt: skip


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413, refused by its
    ``content-length`` before it is read, or once a streamed (chunked) body passes the limit.

    The body is read here (at most ``limit`` bytes) and handed to the app in one message.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._too_large(send)
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        response = JSONResponse(
            {"error": f"request body over {self.limit} bytes (max_body_bytes)"}, 413
        )
        await response({"type": "http"}, None, send)


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    """(status, one line) for a request FastAPI could not parse or validate."""
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
        return 400, f"malformed JSON: {ctx.get('error', 'cannot parse the body')}"
    lines = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        lines.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(lines)


def make_app(ranker: Ranker, max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """The ASGI app serving ``ranker`` (FastAPI, wrapped in :class:`BodyLimit`)."""
    app = FastAPI(title="rankgym ranker", version=str(ranker.manifest["format_version"]))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(err)
        return JSONResponse({"error": message}, status)

    @app.exception_handler(RankerError)
    async def refused(request: Request, err: RankerError) -> JSONResponse:
        # one request per call: "request 0" says nothing to the client
        return JSONResponse({"error": re.sub(r"^request 0:? ?", "", str(err))}, 422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.exception("error serving %s", request.url.path)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {first}"}, 500)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """The ranker's manifest summary."""
        return {"status": "ok", **ranker.summary()}

    @app.post("/rank")
    def rank(body: RankIn) -> dict[str, Any]:
        """Candidates best first, with their scores."""
        ranked = ranker.rank_batch([body.as_request()])[0]
        return {"items": [{"item_id": i, "score": s} for i, s in ranked]}

    @app.post("/explain")
    def explain(body: RankIn) -> dict[str, Any]:
        """:func:`rank` with each score's additive parts."""
        return {"items": ranker.explain_batch([body.as_request()])[0]}

    return BodyLimit(app, max_body_bytes)


def check_settings(cfg: DictConfig) -> None:
    """Refuse a bad port or limit, naming the key."""
    rules = {"port": (cfg.port, 0, 65535), "max_body_bytes": (cfg.max_body_bytes, 1, None)}
    for key, (value, low, high) in rules.items():
        bad = isinstance(value, bool) or not isinstance(value, int) or value < low
        if bad or (high is not None and value > high):
            allowed = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
            raise ValueError(f"{key}={value!r}; allowed: {allowed}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``conf/serve.yaml``): load, verify and serve the ranker."""
    import uvicorn

    try:
        check_settings(cfg)
        ranker = Ranker.load(cfg.ranker, cfg.max_candidates, cfg.threads)
    except (RankerError, ValueError, OSError) as err:
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    policy = ranker.manifest["policy"]
    log.info("serving %s (%s) from %s on http://%s:%d", policy["name"], policy["kind"],
             cfg.ranker, cfg.host, cfg.port)  # fmt: skip
    app = make_app(ranker, cfg.max_body_bytes)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False)


if __name__ == "__main__":
    main()
