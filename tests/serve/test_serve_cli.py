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


def test_named_adapters_from_the_command_line(tmp_path, capsys):
    from efflm.cli import main
    from tests.serve.test_multi_lora_serve import make_adapter

    a, dora = make_adapter(tmp_path / "a", 1), make_adapter(tmp_path / "d", 2, method="dora")
    base = ("serve", "--model", "tiny-llama")
    cases = [
        (("--adapter", f"x={a}", "--adapter", a), "--adapter DIR (one adapter for every request) goes alone"),
        (("--adapter", f"x={a}", "--adapter", f"x={a}"), "--adapter: the name 'x' is given twice"),
        (("--adapter", f"x={dora}"), f"--adapter x={dora}: a dora adapter is not served per request"),
        (("--adapter", "x=/nonexistent"), "/nonexistent: not an adapter directory"),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("efflm: error: " + message), err
    port = free_port()
    env = {**os.environ, "EFFLM_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "efflm.cli", *base, "--port", str(port), "--adapter", f"x={a}",
                             "--enable-lora"], stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert proc.stderr.readline().startswith("efflm: serving tiny-llama")
        url = f"http://127.0.0.1:{port}/v1"
        assert [m["id"] for m in httpx.get(url + "/models").json()["data"]] == ["tiny-llama", "x"]
        r = httpx.post(url + "/load_lora_adapter", json={"lora_name": "y", "lora_path": a})
        assert r.status_code == 200, r.text
        r = httpx.post(url + "/completions", json={"model": "y", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "y"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
