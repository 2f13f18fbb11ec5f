"""The harness's measurements: perplexity, bytes, speed, memory-bandwidth ceiling, peak RSS.

Definitions (also in the README):
* perplexity: exp of the mean next-token negative log-likelihood over non-overlapping
  windows of ``seq_len`` tokens, each window scored on its own (``seq_len − 1`` predicted
  tokens per window), over the first ``n_windows`` windows of the evaluation text;
* bytes: every parameter and buffer the model holds, as stored (packed buffers count
  their packed size), each shared tensor once;
* as-sparse bytes (pruned models only): the same, had every decoder Linear with at least
  10% zero weights (quantized: half its codes zero) been stored as its nonzero values plus a
  1-bit-per-weight mask (2:4's 2-bit indices cost the same) — an estimate; the measured
  rows hold the zeros densely;
* prefill latency (TTFT): one forward of a ``prompt_len``-token prompt;
* decode tok/s: greedy decoding of ``new_tokens`` tokens at batch 1 after the prefill,
  on efflm's decode path (static KV cache, the model's KV method, speculative decoding if
  configured); TPOT = 1 / tok/s. One warm-up, then ``reps`` timed repetitions: median, min
  and max are reported. ``hf_tok_s``: the same through transformers' ``generate`` (reference; one run after a warm-up);
* KV bytes: the decode path's cache for ``prompt_len + new_tokens`` tokens;
* perplexity of a model with a KV-cache method: scored token by token through that cache
  (one sequence of ``seq_len · n_windows`` tokens, so eviction really happens), not in windows;
* ceiling tok/s = memory read bandwidth / bytes read per decoded token.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import time
from typing import Any

import torch

from efflm.core.defaults import EVAL_SEQ_LEN, EVAL_WINDOWS
from efflm.core.device import of as device_of
from efflm.core.device import synchronize
from efflm.core.errors import EfflmError
from efflm.core.progress import progress


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module, ids: torch.Tensor, seq_len: int = EVAL_SEQ_LEN, n_windows: int = EVAL_WINDOWS
) -> dict:
    """Token-level perplexity over non-overlapping windows (paper style); a model with a KV-cache
    method scores each window through that cache (eviction happens inside the window)."""
    available = ids.numel() // seq_len
    if available < 1:
        raise EfflmError(
            f"text too short: {ids.numel()} tokens, need at least one window of {seq_len} "
            "(lower --seq-len or give more text)"
        )
    n = min(n_windows, available)
    nll, count = 0.0, 0
    engine = _kv_engine(model)
    where = device_of(model)  # the windows go where the model is
    for i in progress(range(n), desc="perplexity", total=n):
        window = ids[i * seq_len : (i + 1) * seq_len].unsqueeze(0).to(where)
        if engine is not None:  # token by token through the model's KV-cache method
            engine.start(1, seq_len)
            logits = engine.feed(window, all_logits=True)[0, :-1]
        else:
            logits = model(window, use_cache=False).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum")
        nll += loss.item()
        count += seq_len - 1
    if not math.isfinite(nll):
        raise EfflmError("perplexity is not finite: the model produced NaN or inf logits")
    return {"ppl": math.exp(nll / count), "eval_tokens": count, "windows": n, "seq_len": seq_len}


def _kv_engine(model: torch.nn.Module):
    from efflm.inference.cache import kv_spec
    from efflm.inference.engine import Engine

    return Engine(model) if kv_spec(model) else None


def _unique_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen, out = set(), []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            out.append((name, t))
    return out


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for _, t in _unique_tensors(model))


def bytes_read_per_token(model: torch.nn.Module) -> int:
    """Bytes a decode step must stream: all weights, except an untied input embedding (one row)."""
    emb = {t.data_ptr(): t for t in model.get_input_embeddings().state_dict().values()}
    out = model.get_output_embeddings()
    head = {t.data_ptr() for t in out.state_dict().values()} if out is not None else set()
    total = model_bytes(model)
    if head & set(emb):  # tied: the shared matrix is read every step as the lm_head
        return total
    return total - sum(t.numel() * t.element_size() for t in emb.values())


def as_sparse_bytes(model: torch.nn.Module, min_zeros: float = 0.1, min_zero_codes: float = 0.5) -> int | None:
    """Bytes with sparse decoder Linears stored as nonzeros + bitmask; None if none is sparse.

    A float Linear counts with at least ``min_zeros`` exact zeros; a quantized one with at least
    ``min_zero_codes`` zero codes (plain 3-bit RTN already rounds up to ~41% of codes to zero)."""
    from efflm.models.arch import decoder_linears
    from efflm.nn.quant_linear import QuantLinear

    saved, sparse = 0.0, False
    for _, lin in decoder_linears(model):
        if isinstance(lin, torch.nn.Linear):
            stored, zero, least = lin.weight, lin.weight == 0, min_zeros
        elif isinstance(lin, QuantLinear) and lin.symmetric:  # code 2^(b-1) is exactly zero
            stored, zero, least = lin.qweight, lin.codes() == 2 ** (lin.bits - 1), min_zero_codes
        else:
            continue
        frac = zero.float().mean().item()
        if frac >= least:
            sparse = True
            saved += stored.numel() * stored.element_size() * frac - zero.numel() / 8
    return int(model_bytes(model) - saved) if sparse else None


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.inference_mode()
def hf_greedy_timing(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """transformers' ``generate`` (the reference path): (prefill seconds, decode seconds)."""
    prompt = prompt.to(device_of(model))
    t0 = time.perf_counter()
    model(prompt, use_cache=True)
    synchronize(prompt.device)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    synchronize(prompt.device)
    return prefill, max(1e-9, time.perf_counter() - t0 - prefill)


@torch.inference_mode()
def _greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float, int | None]:
    """efflm's decode path (static KV cache; speculative if the model says so): (prefill seconds,
    decode seconds for the tokens after the first, KV-cache bytes)."""
    from efflm.inference.engine import Engine
    from efflm.inference.generate import SamplingConfig, generate_ids
    from efflm.inference.speculative import drafter_for, speculative_ids

    cfg = SamplingConfig(max_new_tokens=new_tokens)
    spec = drafter_for(model)
    if spec is not None:  # clocks as on the plain path: TTFT to the first token, then per later token
        draft, sc = spec
        out, timing, _ = speculative_ids(
            model, prompt[0].tolist(), cfg, draft=draft, k=sc.k, max_ngram=sc.ngram, min_ngram=sc.min_ngram,
            adaptive=sc.adaptive,
        )  # fmt: skip
        if len(out) != new_tokens or timing.new_tokens == 0:
            raise EfflmError(
                f"speculative timing: {len(out)} tokens ({timing.new_tokens} after the first step) "
                f"for {new_tokens} asked; raise new_tokens"
            )
        return timing.ttft_s, timing.decode_s * (new_tokens - 1) / timing.new_tokens, None
    engine = Engine(model)
    (res,), timing = generate_ids(model, None, prompt, torch.ones_like(prompt, dtype=torch.bool), cfg, engine=engine)
    if len(res.tokens) != new_tokens:
        raise EfflmError(f"decode timing: {len(res.tokens)} tokens for {new_tokens} asked")
    return timing.ttft_s, timing.decode_s, engine.cache.nbytes()


def decode_path(model: torch.nn.Module) -> str:
    """The decode step efflm's decode path runs for ``model``: ``c`` (the fused C step) or
    ``torch (why not C)``, from ``Engine.fast_off``."""
    from efflm.inference.engine import Engine

    engine = Engine(model)
    return "c" if engine.fast is not None else f"torch ({engine.fast_off})"


def speed(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int = 32, reps: int = 3, reference: bool = True
) -> dict:
    """Prefill latency and decode throughput at batch 1 on efflm's decode path (one warm-up, then
    ``reps`` runs), and transformers' ``generate`` on the same prompt as the reference."""
    if new_tokens < 2:
        raise EfflmError("speed measurement needs at least 2 new tokens")
    prompt = prompt.reshape(1, -1)
    _greedy(model, prompt, min(new_tokens, 4))
    runs = [_greedy(model, prompt, new_tokens) for _ in progress(range(reps), desc="speed", total=reps)]
    prefill = [p * 1000 for p, _, _ in runs]
    tok_s = [(new_tokens - 1) / d for _, d, _ in runs]
    out = {
        "ttft_ms": statistics.median(prefill),
        "ttft_ms_min": min(prefill),
        "ttft_ms_max": max(prefill),
        "tok_s": statistics.median(tok_s),
        "tok_s_min": min(tok_s),
        "tok_s_max": max(tok_s),
        "kv_bytes": runs[0][2],
        "prompt_len": prompt.shape[1],
        "new_tokens": new_tokens,
        "reps": reps,
    }
    if reference:  # one warm-up and one timed run: a reference, not the row's own number
        hf_greedy_timing(model, prompt, min(new_tokens, 4))
        out["hf_tok_s"] = (new_tokens - 1) / hf_greedy_timing(model, prompt, new_tokens)[1]
    return out


def measure_bandwidth(mib: int = 512, reps: int = 5) -> float:
    """Memory read bandwidth in GB/s: best of ``reps`` sums over a buffer far larger than cache."""
    x = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32)
    x.sum()
    best = min(_timed(x.sum) for _ in range(reps))
    return x.numel() * 4 / best / 1e9


def bandwidth_gbs() -> float:
    """This machine's read bandwidth, measured once and cached per CPU model and thread count."""
    from efflm.core.atomic import atomic_write_text
    from efflm.core.paths import cache_dir
    from efflm.eval.env import cpu_model

    path = cache_dir() / "bandwidth.json"
    key = f"{cpu_model()}|{torch.get_num_threads()}"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cached:
        cached[key] = measure_bandwidth()
        atomic_write_text(path, json.dumps(cached, indent=1))
    return cached[key]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe(model: torch.nn.Module) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for _, t in _unique_tensors(model):
        counts[str(t.dtype).removeprefix("torch.")] = counts.get(str(t.dtype).removeprefix("torch."), 0) + t.numel()
    return {"elements_by_dtype": counts}
