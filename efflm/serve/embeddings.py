"""``POST /v1/embeddings``: the served model's last hidden states (after its final norm), mean-pooled
over each input's tokens and scaled to unit length, in OpenAI's shape (``encoding_format`` float or
base64, as the official client asks by default). ``input`` is a string, a list of strings, a list
of token ids or a list of such lists; ``model`` may name a served LoRA adapter. The forward runs on
the scheduler thread between two decode steps (``Batcher.call``), one input at a time."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from efflm.serve.errors import ApiError
from efflm.serve.protocol import chosen_model, only, parse_json

FIELDS = {"model", "input", "encoding_format", "user"}
MAX_INPUTS = 256


def inputs(body: dict, tok: Any, max_len: int, vocab: int) -> list[list[int]]:
    """Each input's token ids, or ApiError."""
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_INPUTS:
        raise ApiError(400, f"'input' must be a string, token ids, or a list of 1..{MAX_INPUTS} of them", param="input")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            ids = tok(item, add_special_tokens=False)["input_ids"]
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            ids = item
            if any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"input[{i}]: token ids must be in [0, {vocab})", param="input")
        else:
            raise ApiError(400, f"input[{i}] must be a string or a list of token ids", param="input")
        if not 1 <= len(ids) <= max_len:
            raise ApiError(400, f"input[{i}] has {len(ids)} tokens; 1..{max_len} are served", param="input")
        out.append(list(ids))
    return out


@torch.inference_mode()
def embed(model: Any, ids: list[list[int]], routing: Any = None, adapter: str | None = None) -> list[np.ndarray]:
    """Unit-length mean-pooled final hidden states, one per input (through ``adapter`` if named)."""
    device = next(model.parameters()).device
    out = []
    for seq in ids:
        if routing is not None:
            routing.rows = [adapter]
        h = model(input_ids=torch.tensor([seq], device=device), output_hidden_states=True).hidden_states[-1]
        v = h[0].float().mean(0)
        out.append((v / v.norm().clamp(min=1e-12)).cpu().numpy())
    return out


def add_embedding_route(app: FastAPI, batcher: Any, served: str, check_key: Callable[[Request], None]) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        try:
            check_key(request)
            body = parse_json(await request.body())
            only(body, FIELDS)
            model, adapter = chosen_model(body, served, batcher.adapters.names() if batcher.adapters else ())
            fmt = body.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
            ids = inputs(body, batcher.tok, batcher.max_len, batcher.model.config.vocab_size)
            routing = batcher.adapters.routing if batcher.adapters is not None else None
            vecs = await asyncio.get_running_loop().run_in_executor(
                None, batcher.call, lambda: embed(batcher.model, ids, routing, adapter)
            )
        except ApiError as e:
            return JSONResponse(e.body(), status_code=e.status)
        data = [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()}
            for i, v in enumerate(vecs)
        ]  # fmt: skip
        n = sum(len(s) for s in ids)
        return JSONResponse(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n, "total_tokens": n}}
        )
