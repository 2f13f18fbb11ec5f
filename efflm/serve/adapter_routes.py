"""``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM's names and bodies): LoRA
adapters added to and removed from a running server, behind the API key. The files are read
off the event loop; the model changes on the scheduler thread between two steps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from efflm.core.errors import EfflmError
from efflm.serve.errors import ApiError
from efflm.serve.protocol import only, parse_json

LOAD_FIELDS, UNLOAD_FIELDS = {"lora_name", "lora_path"}, {"lora_name"}


def _body(raw: bytes, fields: set[str]) -> dict:
    body = parse_json(raw)
    only(body, fields)
    for name in sorted(fields):
        if not isinstance(body.get(name), str) or not body[name]:
            raise ApiError(400, f"'{name}' must be a non-empty string", param=name)
    return body


def add_adapter_routes(app: FastAPI, batcher: Any, served: str, check_key: Callable[[Request], None]) -> None:
    adapters = batcher.adapters

    async def checked(request: Request, fields: set[str]) -> dict:
        check_key(request)
        if adapters is None:
            raise ApiError(400, "this server loads no adapters at runtime (start it with --enable-lora "
                                "or --adapter NAME=DIR)", code="lora_disabled")  # fmt: skip
        return _body(await request.body(), fields)

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        try:
            body = await checked(request, LOAD_FIELDS)
            name = body["lora_name"]
            if name == served or name in adapters.paths:
                raise ApiError(400, f"the model name '{name}' is taken", param="lora_name")
            loop = asyncio.get_running_loop()
            loaded = await loop.run_in_executor(None, adapters.read, name, body["lora_path"])
            await loop.run_in_executor(None, batcher.call, lambda: adapters.attach(loaded))
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)
        except EfflmError as e:
            err = ApiError(400, str(e), param="lora_path")
            return JSONResponse(err.body(), status_code=err.status)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        try:
            body = await checked(request, UNLOAD_FIELDS)
            name = body["lora_name"]

            def detach() -> None:
                busy = batcher.in_use(name)
                if busy:
                    raise ApiError(400, f"adapter '{name}' is in use by {busy} request(s): unload it when they finish",
                                   param="lora_name", code="adapter_in_use")  # fmt: skip
                adapters.detach(name)

            await asyncio.get_running_loop().run_in_executor(None, batcher.call, detach)
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)
        except EfflmError as e:
            err = ApiError(400, str(e), param="lora_name", code="model_not_found")
            return JSONResponse(err.body(), status_code=err.status)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
