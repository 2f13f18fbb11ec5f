"""The OpenAI-compatible HTTP surface (Starlette through FastAPI, served by uvicorn).

``POST /v1/chat/completions`` and ``/v1/completions`` (SSE streaming or one JSON answer),
``GET /v1/models``, ``POST /v1/embeddings``, ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM's), ``/health``, ``/metrics`` (Prometheus) and ``/`` (the playground page).
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

from efflm.serve.adapter_routes import add_adapter_routes
from efflm.serve.batcher import Batcher, Draining, QueueFull
from efflm.serve.batcher import Request as Job
from efflm.serve.embeddings import add_embedding_route
from efflm.serve.prometheus import Metrics
from efflm.serve.protocol import GRAMMAR_FIELDS, ApiError, job, parse_json
from efflm.serve.shapes import Shape
from efflm.serve.tools import parse_output


def _error(e: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def build_app(batcher: Batcher, served: str, api_key: str | None = None, retry_after_s: int = 1,
              compress: Any = None, max_n: int = 8) -> FastAPI:  # fmt: skip
    adapters = batcher.adapters  # serve.adapters.Adapters, or None: no per-request adapters
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
            "root": served,
            "parent": None,
            "max_model_len": batcher.max_len,
        }
        cards = [card]
        for name, path in adapters.paths.items() if adapters is not None else ():
            cards.append({**card, "id": name, "root": path, "parent": served})
        return JSONResponse({"object": "list", "data": cards})

    add_adapter_routes(app, batcher, served, check_key)
    add_embedding_route(app, batcher, served, check_key)

    async def complete(request: Request, chat: bool) -> Response:
        vocab = batcher.model.config.vocab_size
        try:
            check_key(request)
            body = parse_json(await request.body())
            names = adapters.names() if adapters is not None else ()
            args = (body, chat, batcher.tok, served, batcher.max_len, compress, max_n, vocab, names)
            if compress is None and not any(k in body for k in GRAMMAR_FIELDS):
                spec = job(*args)
            else:  # a prompt compressor runs a small LM, a grammar compiles: off the event loop
                spec = await asyncio.get_running_loop().run_in_executor(None, job, *args)
        except ApiError as e:
            return _error(e)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = Job(spec.prompt_ids, spec.sampling, lambda kind, v: loop.call_soon_threadsafe(events.put_nowait, (kind, v)),
                  spec.n, spec.logprobs, spec.adjust, spec.grammar, spec.echo, adapter=spec.adapter)  # fmt: skip
        refused = batcher.solo_refuses(req)
        if refused:
            return _error(ApiError(400, f"'{refused}' is not served for this model (it decodes one request at a time: "
                                        "speculative decoding or a KV-cache policy)", param=refused.split(" ")[0]))  # fmt: skip
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
        shape = Shape(chat, rid, spec.model, int(time.time()), batcher.tok, spec.logprobs)
        if spec.stream:
            return StreamingResponse(_sse(batcher, metrics, req, events, shape, spec),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip
        texts, entries = [[] for _ in range(spec.n)], [[] for _ in range(spec.n)]
        gens: dict[int, Any] = {}
        try:
            while len(gens) < spec.n:
                try:
                    kind, value = await asyncio.wait_for(events.get(), timeout=0.25)
                except TimeoutError:
                    if await request.is_disconnected():
                        batcher.cancel(req)
                        return Response(status_code=499)
                    continue
                if kind == "error":
                    batcher.cancel(req)
                    return _error(ApiError(500, f"generation failed: {value}"))
                i = value[0]
                entries[i].extend(value[-1])
                if kind == "text":
                    texts[i].append(value[1])
                else:
                    gens[i] = value[1]
            metrics.finished(req)
            out = ["".join(t) for t in texts]
            lps, calls = entries, None
            if spec.echo:
                head, head_lps = shape.echo(spec.prompt_ids, req.prompt_logprobs)
                out, lps = [head + t for t in out], [head_lps + e for e in entries]
            if spec.tools is not None:
                parsed = [parse_output(t, spec.tools) for t in out]
                out, calls = [p[0] for p in parsed], [p[1] for p in parsed]
            return JSONResponse(shape.whole(out, [gens[i] for i in range(spec.n)], lps, calls))
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


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _sse(batcher: Batcher, metrics: Metrics, req: Job, events: asyncio.Queue, shape: Shape, spec: Any):
    """Server-sent events, each choice's deltas tagged with its index; a disconnect cancels the
    request (its rows free at the next step)."""
    done = False
    gens: dict[int, Any] = {}
    held: list[list[str]] = [[] for _ in range(spec.n)]
    try:
        for i in range(spec.n):
            if shape.chat:
                yield _data(shape.chunk(i, None, [], role=True))
            if spec.echo:
                head, head_lps = shape.echo(spec.prompt_ids, req.prompt_logprobs)
                yield _data(shape.chunk(i, head, head_lps))
        while len(gens) < spec.n:
            kind, value = await events.get()
            if kind == "error":
                yield _data(ApiError(500, f"generation failed: {value}").body())
                done = True
                break
            if kind == "text" and spec.tools is not None:  # a tool call is known once its text is whole
                held[value[0]].append(value[1])
            elif kind == "text":
                yield _data(shape.chunk(value[0], value[1], value[2]))
            elif spec.tools is not None:
                i, gens[i], _ = value
                content, calls = parse_output("".join(held[i]), spec.tools)
                for chunk in shape.tool_chunks(i, content, calls, gens[i]):
                    yield _data(chunk)
            else:
                i, gens[i], rest = value
                yield _data(shape.chunk(i, None, rest, gen=gens[i]))
        else:
            done = True
            metrics.finished(req)
            if spec.include_usage:
                yield _data(shape.usage_chunk([gens[i] for i in range(spec.n)]))
        yield b"data: [DONE]\n\n"
    finally:
        if not done:
            batcher.cancel(req)
