"""`efflm serve` as a process: argument errors before any work, SIGTERM drains in-flight streams."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from tests.serve.conftest import free_port


def _efflm(*args, **kw):
    return subprocess.run([sys.executable, "-m", "efflm.cli", *args], capture_output=True, text=True, timeout=120, **kw)


def test_bad_port_and_busy_port_are_one_line_errors():
    r = _efflm("serve", "--model", "tiny-llama", "--port", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["efflm: error: --port must be in 1..65535, got 0"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _efflm("serve", "--model", "tiny-llama", "--port", str(port))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"efflm: error: cannot listen on 127.0.0.1:{port}")
    r = _efflm("serve", "--max-batch", "zero")
    assert r.returncode == 2 and r.stderr.startswith("efflm: error: argument --max-batch")
    r = _efflm("serve", "--model", "tiny-llama", "--max-batch", "2", "--max-n", "3")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "efflm: error: --max-n (3) cannot exceed --max-batch (2): n completions take n rows"
    ]


def test_sigterm_finishes_the_stream_in_flight_then_exits():
    port = free_port()
    env = {**os.environ, "EFFLM_PROGRESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "efflm.cli", "serve", "--model", "tiny-llama", "--port", str(port), "--max-len", "512"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stderr.readline()
        assert line.startswith("efflm: serving tiny-llama on http://127.0.0.1:"), line
        url = f"http://127.0.0.1:{port}"
        got, first = [], threading.Event()

        def stream():
            body = {"prompt": "Once upon a time", "max_tokens": 400, "stream": True, "temperature": 0}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                for ln in r.iter_lines():
                    if ln.startswith("data: "):
                        got.append(ln[6:])
                        first.set()

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert got[-1] == "[DONE]"
    last = json.loads(got[-2])
    assert last["choices"][0]["finish_reason"] in ("length", "stop")
    assert len(got) > 3
    time.sleep(0.1)
    try:
        httpx.get(url + "/health", timeout=2)
        raise AssertionError("the server still answers after SIGTERM")
    except httpx.HTTPError:
        pass
