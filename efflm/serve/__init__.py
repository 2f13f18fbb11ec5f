"""``efflm serve``: an OpenAI-compatible server with continuous batching on efflm's engine.

``batcher`` schedules (iteration-level, Orca-style; ``solo`` one request at a time for models
that cannot share a batch; ``prefix_cache`` shared prompt prefixes' KV), ``protocol`` checks request bodies (``errors`` their 400s, ``tools``
tool calls), ``adapters`` named LoRA adapters per request (``adapter_routes`` loads them at runtime), ``shapes`` writes OpenAI's response objects, ``app`` is the HTTP surface (FastAPI on uvicorn, SSE streaming),
``prometheus`` the metrics side, and ``static/playground.html`` the browser page at ``/``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def run(
    model: Any,
    tok: Any,
    served: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_queue: int = 64,
    max_len: int = 2048,
    chunk: int = 128,
    decode_chunk: int | None = None,
    max_n: int = 4,
    prefix_cache_mb: float = 0.0,
    api_key: str | None = None,
    drain_s: float = 30.0,
    on_ready: Any = None,
    compress: Any = None,
    adapters: Any = None,
) -> None:
    """Serve until SIGTERM/SIGINT: then stop admitting, let in-flight streams finish within
    ``drain_s`` seconds, and return. ``adapters``: ``serve.adapters.Adapters`` (named LoRA
    adapters per request), made before the batcher builds its engine."""
    import uvicorn

    from efflm.serve.app import build_app
    from efflm.serve.batcher import Batcher

    batcher = Batcher(model, tok, max_batch=max_batch, max_queue=max_queue, max_len=max_len, chunk=chunk,
                      decode_chunk=decode_chunk, prefix_cache_mb=prefix_cache_mb, adapters=adapters)  # fmt: skip
    app = build_app(batcher, served, api_key, compress=compress, max_n=max_n)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT: refuse new work from now on
            batcher.draining = True
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", [])
            if sig == signal.SIGTERM and sig in captured:  # a drained SIGTERM exits 0 (uvicorn re-raises it)
                captured.remove(sig)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready is not None:
                on_ready(self)

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(drain_s), access_log=False
    )
    server = Server(config)
    if threading.current_thread() is not threading.main_thread():  # embedded (tests): scheduler in a thread
        batcher.start()
        try:
            server.run()
        finally:
            batcher.shutdown(0.0)
        return
    # the model steps on the main thread (see Batcher.run_here), HTTP in a thread of its own
    http = threading.Thread(target=server.run, name="efflm-http", daemon=True)
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        http.start()
        batcher.run_here(done=lambda: not http.is_alive())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
        http.join(timeout=drain_s + 5)
