"""Prometheus metrics of one server, named in vLLM's style (``efflm:`` where vLLM has ``vllm:``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PER_TOKEN = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class Metrics:
    def __init__(self, batcher: Any, model: str):
        self.registry = r = CollectorRegistry()
        labels = {"model_name": model}
        self.ttft = Histogram(
            "efflm:time_to_first_token_seconds", "Time to first token.", ["model_name"], registry=r, buckets=_LATENCY
        ).labels(**labels)
        self.tpot = Histogram(
            "efflm:time_per_output_token_seconds",
            "Time per output token after the first.",
            ["model_name"],
            registry=r,
            buckets=_PER_TOKEN,
        ).labels(**labels)
        self.e2e = Histogram(
            "efflm:e2e_request_latency_seconds", "End-to-end request latency.", ["model_name"], registry=r,
            buckets=_LATENCY,
        ).labels(**labels)  # fmt: skip
        self.prompt_tokens = Counter(
            "efflm:prompt_tokens", "Prompt tokens processed.", ["model_name"], registry=r
        ).labels(**labels)
        self.generation_tokens = Counter(
            "efflm:generation_tokens", "Generated tokens.", ["model_name"], registry=r
        ).labels(**labels)
        self.success = Counter(
            "efflm:request_success", "Finished requests by reason.", ["model_name", "finished_reason"], registry=r
        )
        self.rejected = Counter(
            "efflm:request_rejected", "Requests refused: queue full or shutting down.", ["model_name"], registry=r
        ).labels(**labels)
        self.model = model
        running = Gauge("efflm:num_requests_running", "Requests in prefill or decode.", ["model_name"], registry=r)
        running.labels(**labels).set_function(lambda: batcher.counts()[0])
        waiting = Gauge("efflm:num_requests_waiting", "Requests waiting for a row.", ["model_name"], registry=r)
        waiting.labels(**labels).set_function(lambda: batcher.counts()[1])
        slots = Gauge("efflm:kv_cache_slots_in_use", "KV-cache slots holding a token.", ["model_name"], registry=r)
        slots.labels(**labels).set_function(lambda: batcher.slots_in_use())
        total = Gauge("efflm:kv_cache_slots_total", "KV-cache slots of the batch cache.", ["model_name"], registry=r)
        total.labels(**labels).set(batcher.max_batch * batcher.max_len)
        if batcher.prefix is not None:
            p = batcher.prefix  # vLLM's prefix_cache_queries / _hits, in tokens
            r.register(_Counters(model, [
                ("efflm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", lambda: p.query_tokens),
                ("efflm:prefix_cache_hits", "Prompt tokens whose KV came from the prefix cache.", lambda: p.hit_tokens),
            ]))  # fmt: skip
        if batcher.lookup is not None:  # in-batch speculation (vLLM's spec_decode counters)
            r.register(_Counters(model, [
                ("efflm:spec_decode_num_draft_tokens", "Draft tokens proposed.", lambda: batcher.drafted),
                ("efflm:spec_decode_num_accepted_tokens", "Draft tokens accepted.", lambda: batcher.accepted),
            ]))  # fmt: skip

    def finished(self, req: Any) -> None:
        """Record one finished request (``Request`` with timing and its Generation)."""
        g = req.gen
        self.prompt_tokens.inc(g.prompt_tokens)
        self.generation_tokens.inc(len(g.tokens))
        self.success.labels(model_name=self.model, finished_reason=g.finish).inc()
        if req.t_first is not None:
            self.ttft.observe(req.t_first - req.t_submit)
            if req.t_last is not None and len(g.tokens) > 1:
                self.tpot.observe((req.t_last - req.t_first) / (len(g.tokens) - 1))
            self.e2e.observe((req.t_last or req.t_first) - req.t_submit)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Counters:
    """Counters read from a callable when scraped."""

    def __init__(self, model: str, counters: list):
        self.model, self.counters = model, counters

    def collect(self):
        for name, doc, read in self.counters:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model], read())
            yield family
