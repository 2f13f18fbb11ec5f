"""Load test: `efflm serve` against llama.cpp's C++ `llama-server` and llama-cpp-python's server
on the same 4-bit codes.

    python benchmarks/serve_load.py [--model smollm2-135m] [--concurrency 1,4,8,16,32]

Both servers run on loopback at the same time (idle between their turns) with 2 threads:
* efflm: ``efflm serve`` with the recipe RTN W4 g32 + int8 embeddings + bf16 (the packed
  4-bit model of ``vs_llamacpp.py``), ``--max-batch 8``, prompts prefilled in chunks of about
  one decode step's time while sequences decode (its default; ``--decode-chunk N`` fixes it);
* llama.cpp's ``llama-server`` (``make llama-server`` builds it from the llama.cpp source vendored
  in llama-cpp-python's sdist) on efflm's Q4_0 export of exactly those codes: ``--parallel 8``
  slots, continuous batching, ``-t 2 -tb 2``, 512 tokens per slot, prompt caching off (efflm's
  prefix cache is off too; the prompts repeat);
* llama-cpp-python's ``python -m llama_cpp.server`` on the same file (``n_threads =
  n_threads_batch = 2``, ``interrupt_requests = False``: its default lets a new request cut off
  the one streaming); it serves one request at a time.

A request whose kept-alive connection the server had closed (cpp-httplib caps the requests per
connection) fails before it is sent; the client retries it once on a new connection, as HTTP
clients do, with its clock running from the first try.

An asyncio client (httpx, SSE) sends, for each concurrency level c, 2c requests (at least 4)
from c concurrent streams: fixed prompts (evaluation text, ``--prompt-len`` tokens), fixed
``--max-tokens``, greedy. Per level and server: request throughput, output tokens/s, TTFT and
inter-token latency p50/p99, failures. Servers take turns level by level, after one warm-up
request each. Then an overload check on efflm (``--max-batch 2 --max-queue 2``): a burst
beyond the queue, and how fast the 429s come back. Writes ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}): {url}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not up after {timeout} s: {url}")


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    for attempt in (0, 1):
        got = await _stream(client, url, body, t0)
        if got.get("status") not in ("RemoteProtocolError", "ConnectError") or got.get("sent") or attempt:
            return got
    return got


async def _stream(client: httpx.AsyncClient, url: str, body: dict, t0: float) -> dict:
    stamps, usage, sent = [], None, False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            sent = True
            if r.status_code != 200:
                await r.aread()
                return {"ok": False, "status": r.status_code, "latency": time.perf_counter() - t0}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"ok": False, "status": type(e).__name__, "sent": sent, "latency": time.perf_counter() - t0}
    end = time.perf_counter()
    tokens = usage if usage is not None else len(stamps)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ok": bool(stamps), "ttft": (stamps[0] - t0) if stamps else None, "gaps": gaps, "tokens": tokens,
            "latency": end - t0}  # fmt: skip


async def level(url: str, model: str, prompts: list[str], c: int, max_tokens: int) -> dict:
    n = max(4, 2 * c)
    queue = list(range(n))
    results = []

    async def stream(client):
        while queue:
            i = queue.pop()
            results.append(await one(client, url, model, prompts[i % len(prompts)], max_tokens))

    limits = httpx.Limits(max_connections=c + 2, max_keepalive_connections=c + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(stream(client) for _ in range(c)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    ttft = sorted(r["ttft"] for r in ok)
    gaps = sorted(g for r in ok for g in r["gaps"])
    return {
        "requests": n,
        "failed": n - len(ok),
        "req_s": len(ok) / wall,
        "tok_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "ttft_max": ttft[-1] if ttft else float("nan"),
        "itl_p50": pct(gaps, 50),
        "itl_p99": pct(gaps, 99),
    }


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def overload(url: str, model: str, prompt: str, burst: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=httpx.Limits(max_connections=burst + 2)) as client:
        return await asyncio.gather(*(one(client, url, model, prompt, 256) for _ in range(burst)))


def start_efflm(model: str, recipe: Path, port: int, threads: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "efflm.cli", "serve", "--model", model, "--recipe", str(recipe), "--port", str(port),
           "--served-model-name", "efflm", *extra]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_llama_server(binary: Path, gguf: Path, port: int, threads: int, slots: int) -> subprocess.Popen:
    cmd = [str(binary), "-m", str(gguf), "-a", "llama-server", "--host", "127.0.0.1", "--port", str(port),
           "-t", str(threads), "-tb", str(threads), "-c", str(512 * slots), "--parallel", str(slots),
           "--cont-batching", "--no-cache-prompt", "--cache-ram", "0", "--no-webui"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_llama(gguf: Path, port: int, threads: int, n_ctx: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "llama", "--port", str(port),
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--verbose", "False",
           "--interrupt_requests", "False"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


RECIPE = """- method: rtn
  bits: 4
  group_size: 32
- method: int8_embeddings
- method: dense
  dtype: bfloat16
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/serve_load.py")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--concurrency", default="1,4,8,16,32")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-chunk", type=int, help="efflm serve --decode-chunk (default: its own, measured)")
    p.add_argument("--llama-server", default="build/llama-server/bin/llama-server",
                   help="llama.cpp's llama-server binary (make llama-server); skipped when absent")  # fmt: skip
    p.add_argument("--ttft-bound", type=float, default=60.0, help="seconds every TTFT must stay below at the top level")
    p.add_argument("--out", default="results/serve_load.md")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from efflm.core.atomic import publish
    from efflm.core.recipe import from_yaml
    from efflm.datasets import text
    from efflm.io import gguf_export
    from efflm.models.sources import gguf_source
    from efflm.pipeline import load_and_apply

    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="efflm-serve-load-"))
    recipe = tmp / "w4.yaml"
    recipe.write_text(RECIPE)
    w4, tok = load_and_apply(a.model, from_yaml(RECIPE.split("- method: int8")[0]))
    source = gguf_source(a.model)
    gguf = gguf_export.export(w4, source, tmp / "w4.gguf") if source is not None else None
    ids = text.eval_tokens(tok, a.prompt_len * 32).reshape(32, a.prompt_len)
    prompts = [tok.decode(r) for r in ids]
    del w4
    servers = {}
    port = free_port()
    extra = ["--max-batch", "8", *(["--decode-chunk", str(a.decode_chunk)] if a.decode_chunk else [])]
    servers["efflm serve (W4 g32, max batch 8)"] = (f"http://127.0.0.1:{port}", "efflm",
                                                    start_efflm(a.model, recipe, port, a.threads, extra))  # fmt: skip
    binary = Path(a.llama_server)
    if gguf is not None and binary.is_file():
        port = free_port()
        servers["llama.cpp llama-server (Q4_0 export, 8 slots)"] = (f"http://127.0.0.1:{port}", "llama-server",
                                                                    start_llama_server(binary, gguf, port, a.threads, 8))  # fmt: skip
    elif gguf is not None:
        print(f"no {binary}: llama-server left out (make llama-server builds it)", file=sys.stderr)
    if gguf is not None:
        port = free_port()
        servers["llama-cpp-python server (Q4_0 export)"] = (f"http://127.0.0.1:{port}", "llama",
                                                            start_llama(gguf, port, a.threads, 2048))  # fmt: skip
    rows, over = {}, []
    try:
        for url, _, proc in servers.values():
            wait_up(url, proc)
        for url, model, _ in servers.values():  # warm-up
            asyncio.run(level(url, model, prompts, 1, 8))
        for c in levels:
            for name, (url, model, _) in servers.items():
                r = asyncio.run(level(url, model, prompts, c, a.max_tokens))
                rows[(name, c)] = r
                print(f"{name:40s} c={c:3d} {r['tok_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50']:.3f} s  "
                      f"failed {r['failed']}", flush=True)  # fmt: skip
        for _, _, proc in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        port = free_port()
        small = start_efflm(a.model, recipe, port, a.threads, ["--max-batch", "2", "--max-queue", "2"])
        servers["overload"] = (f"http://127.0.0.1:{port}", "efflm", small)
        wait_up(f"http://127.0.0.1:{port}", small)
        over = asyncio.run(overload(f"http://127.0.0.1:{port}", "efflm", prompts[0], 12))
    finally:
        for _, _, proc in servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    names = [n for n in servers if n != "overload"]
    lines = [
        f"Serving load test on {a.model}, loopback, {a.threads} threads per server, prompts of {a.prompt_len} tokens "
        f"(evaluation text), {a.max_tokens} output tokens, greedy, streamed (SSE). Each level sends max(4, 2c) "
        "requests from c concurrent streams; servers take turns level by level after one warm-up request.",
        "",
        "| server | streams | requests | failed | req/s | output tok/s | TTFT p50 s | TTFT p99 s | ITL p50 ms | "
        "ITL p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in levels:
        for n in names:
            r = rows[(n, c)]
            lines.append(f"| {n} | {c} | {r['requests']} | {r['failed']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
                         f"{r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {1000 * r['itl_p50']:.0f} | "
                         f"{1000 * r['itl_p99']:.0f} |")  # fmt: skip
    ours = names[0]
    lines += ["", "Ratios (output tokens/s):", ""]
    if 1 in levels and 8 in levels:
        lines.append(f"- efflm at 8 streams / efflm at 1 stream: {rows[(ours, 8)]['tok_s'] / rows[(ours, 1)]['tok_s']:.2f}× "
                     "(target ≥ 3×)")  # fmt: skip
    if 8 in levels:
        r = rows[(ours, 8)]
        lines.append(f"- efflm ITL p99 / ITL p50 at 8 streams: {r['itl_p99'] / r['itl_p50']:.2f}× (target ≤ 2×)")
    for peer in names[1:]:
        short = peer.split(" (")[0]
        for c in [c for c in (8, 32) if c in levels]:
            mine, theirs = rows[(ours, c)], rows[(peer, c)]
            lines.append(f"- efflm / {short} at {c} streams: output tok/s {mine['tok_s'] / theirs['tok_s']:.2f}×, "
                         f"TTFT p50 {mine['ttft_p50'] / theirs['ttft_p50']:.2f}× (efflm's over theirs)")  # fmt: skip
    top = max(levels)
    r = rows[(ours, top)]
    lines.append(f"- efflm at {top} streams: {r['failed']} failed, slowest TTFT {r['ttft_max']:.2f} s "
                 f"(bound {a.ttft_bound:.0f} s)")  # fmt: skip
    refused = [o for o in over if not o["ok"] and o.get("status") == 429]
    served = [o for o in over if o["ok"]]
    if refused:
        worst = max(o["latency"] for o in refused) * 1000
        lines.append(f"- overload (max batch 2, max queue 2, a burst of {len(over)}): {len(served)} served, "
                     f"{len(refused)} answered 429, the slowest 429 in {worst:.0f} ms (target ≤ 50 ms)")  # fmt: skip
    else:
        lines.append(f"- overload: no 429 in a burst of {len(over)} (statuses: {[o.get('status') for o in over]})")
    lines += ["", f"Command: `python benchmarks/serve_load.py --model {a.model} --concurrency {a.concurrency} "
              f"--prompt-len {a.prompt_len} --max-tokens {a.max_tokens} --threads {a.threads} "
              f"{f'--decode-chunk {a.decode_chunk} ' if a.decode_chunk else ''}--out {a.out}` (after `make llama-server`)."]  # fmt: skip
    publish(a.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
