import socket
import threading
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def concurrently(fn, n: int, timeout: float = 120) -> list:
    """``[fn(0), ..., fn(n - 1)]``, each call in its own thread, all started before any is joined."""
    got = [None] * n

    def one(i):
        got[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return got


class Running:
    """An in-process `efflm serve` on a free loopback port (uvicorn in a thread)."""

    def __init__(self, model_spec="tiny-llama", recipe=None, **kw):
        from efflm import serve
        from efflm.methods import config_from_dict
        from efflm.pipeline import load_and_apply

        self.model, self.tok = load_and_apply(model_spec, [config_from_dict(step) for step in recipe or []])
        lora = kw.pop("lora", None)  # [(name, dir)] served per request (or []: --enable-lora alone)
        if lora is not None:
            from efflm.serve.adapters import Adapters

            kw["adapters"] = Adapters(self.model)
            for name, path in lora:
                kw["adapters"].attach(kw["adapters"].read(name, path))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        ready = threading.Event()

        def on_ready(server):
            self.server = server
            ready.set()

        kw.setdefault("max_len", 256)
        self.thread = threading.Thread(
            target=serve.run, args=(self.model, self.tok, model_spec), daemon=True,
            kwargs={"port": self.port, "on_ready": on_ready, **kw},
        )  # fmt: skip
        self.thread.start()
        assert ready.wait(60), "server did not start"
        self.batcher = self.server.config.app.state.batcher

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)

    def wait_idle(self, timeout=10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.batcher.idle():
                return True
            time.sleep(0.02)
        return False


@pytest.fixture(scope="module")
def server():
    s = Running(max_batch=4, max_queue=16)
    yield s
    s.stop()
