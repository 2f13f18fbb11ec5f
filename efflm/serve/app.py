"""The OpenAI-compatible HTTP surface (Starlette through FastAPI, served by uvicorn).

``POST /v1/chat/completions`` and ``/v1/completions`` (SSE streaming or one JSON answer),
``GET /v1/models``, ``/health``, ``/metrics`` (Prometheus) and ``/`` (the playground page).
Requests go to the ``Batcher`` thread; its events come back through an asyncio queue. Every
error is OpenAI-shaped JSON; a client that disconnects cancels its request.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from efflm.serve.batcher import Batcher, Draining, QueueFull
from efflm.serve.batcher import Request as Job
from efflm.serve.prometheus import Metrics
from efflm.serve.protocol import ApiError, job, parse_json


def _error(e: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def build_app(batcher: Batcher, served: str, api_key: str | None = None, retry_after_s: int = 1,
              compress: Any = None) -> FastAPI:  # fmt: skip
    app = FastAPI(title="efflm", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(batcher, served)
    app.state.metrics, app.state.batcher = metrics, batcher
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:  # never a traceback in a response
        return _error(ApiError(500, f"internal error: {type(exc).__name__}"))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and secrets.compare_digest(got[7:].encode(), api_key.encode())):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if batcher.draining else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = resources.files("efflm.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", served))

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        try:
            check_key(request)
        except ApiError as e:
            return _error(e)
        card = {
            "id": served,
            "object": "model",
            "created": created,
            "owned_by": "efflm",
            "max_model_len": batcher.max_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def complete(request: Request, chat: bool) -> Response:
        try:
            check_key(request)
            body = parse_json(await request.body())
            if compress is None:
                spec = job(body, chat, batcher.tok, served, batcher.max_len)
            else:  # the compressor runs a small LM: off the event loop
                loop = asyncio.get_running_loop()
                spec = await loop.run_in_executor(None, job, body, chat, batcher.tok, served, batcher.max_len, compress)
        except ApiError as e:
            return _error(e)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = Job(
            spec.prompt_ids, spec.sampling, lambda kind, v: loop.call_soon_threadsafe(events.put_nowait, (kind, v))
        )
        try:
            batcher.submit(req)
        except QueueFull as e:
            metrics.rejected.inc()
            return _error(ApiError(429, str(e), code="queue_full", kind="rate_limit_error"),
                          {"Retry-After": str(retry_after_s)})  # fmt: skip
        except Draining as e:
            metrics.rejected.inc()
            return _error(ApiError(503, str(e), code="shutting_down"))
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        shape = _Shape(chat, rid, served, int(time.time()))
        if spec.stream:
            return StreamingResponse(_sse(batcher, metrics, req, events, shape, spec.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip
        text = []
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), timeout=0.25)
                except TimeoutError:
                    if await request.is_disconnected():
                        batcher.cancel(req)
                        return Response(status_code=499)
                    continue
                if kind == "text":
                    text.append(value)
                elif kind == "error":
                    return _error(ApiError(500, f"generation failed: {value}"))
                else:
                    metrics.finished(req)
                    return JSONResponse(shape.whole("".join(text), value))
        except asyncio.CancelledError:
            batcher.cancel(req)
            raise

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    return app


class _Shape:
    """OpenAI's response objects for one request."""

    def __init__(self, chat: bool, rid: str, model: str, created: int):
        self.chat, self.rid, self.model, self.created = chat, rid, model, created
        self.kind = "chat.completion" if chat else "text_completion"

    @staticmethod
    def usage(gen: Any) -> dict:
        n = len(gen.tokens)
        return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": n, "total_tokens": gen.prompt_tokens + n}

    @staticmethod
    def reason(gen: Any) -> str:
        return "length" if gen.finish == "length" else "stop"

    def _head(self, kind: str) -> dict:
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, gen: Any) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = self.reason(gen)
        return {**self._head(self.kind), "choices": [choice], "usage": self.usage(gen)}

    def chunk(self, delta: str | None, gen: Any = None, role: bool = False) -> dict:
        finish = None if gen is None else self.reason(gen)
        if self.chat:
            d = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, gen: Any) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": self.usage(gen)}


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _sse(batcher: Batcher, metrics: Metrics, req: Job, events: asyncio.Queue, shape: _Shape, usage: bool):
    """Server-sent events; a disconnect cancels the request (its row frees at the next step)."""
    done = False
    try:
        if shape.chat:
            yield _data(shape.chunk(None, role=True))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield _data(shape.chunk(value))
            elif kind == "error":
                err = ApiError(500, f"generation failed: {value}")
                yield _data(err.body())
                done = True
                break
            else:
                done = True
                metrics.finished(req)
                yield _data(shape.chunk(None, gen=value))
                if usage:
                    yield _data(shape.usage_chunk(value))
                break
        yield b"data: [DONE]\n\n"
    finally:
        if not done:
            batcher.cancel(req)
