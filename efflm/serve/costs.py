"""What the scheduler has measured of its own steps, and the sizes it picks from that.

Running averages of the seconds per prefill token, per decode step, and a decode step's cost
beyond its token-rows (weights read, glue). From them: how many prompt tokens to prefill
while sequences decode (about one decode step's worth: Sarathi-Serve's stall-free chunks), and
how long a batch's speculative verification should be — a step of n rows and T tokens each
costs about ``fixed + n·T·per_token``, so drafts pay only while the tokens they are expected to
add outrun that cost (on a CPU a large batch is compute-bound, and speculation stops).
"""

from __future__ import annotations


def _average(old: float | None, new: float, weight: float = 0.2) -> float:
    return new if old is None else (1 - weight) * old + weight * new


class StepCosts:
    def __init__(self) -> None:
        self.tok_s: float | None = None  # seconds per prefill token
        self.step_s: float | None = None  # seconds per decode step
        self.fixed_s: float | None = None  # a decode step's seconds beyond its token-rows × tok_s

    def prefilled(self, tokens: int, seconds: float) -> None:
        """A prefill chunk: its marginal seconds per token (beyond the step's fixed cost, once known)."""
        if tokens >= 4:
            self.tok_s = _average(self.tok_s, max(seconds - (self.fixed_s or 0.0), 1e-3 * seconds) / tokens)

    def decoded(self, tokens: int, seconds: float) -> None:
        """A decode step of ``tokens`` token-rows (rows × tokens per row, a verification's pads included)."""
        self.step_s = _average(self.step_s, seconds)
        if self.tok_s is not None:
            self.fixed_s = _average(self.fixed_s, max(0.0, seconds - tokens * self.tok_s))

    def chunk_while_decoding(self, chunk: int) -> int:
        """Prompt tokens whose chunk takes about one decode step: (step - fixed) / per-token seconds, in
        8..chunk (16 before anything is measured)."""
        if self.tok_s is None or self.step_s is None:
            return min(16, chunk)
        return max(min(8, chunk), min(chunk, round((self.step_s - (self.fixed_s or 0.0)) / self.tok_s)))

    def verify_length(self, drafts: list[list[int]], acceptance: list[float]) -> int:
        """Tokens per row (1 + drafts) that maximise the expected tokens per second of the step, given
        each row's draft and its expected acceptance; 1 means a plain step. Unmeasured: every draft."""
        n, longest = len(drafts), max(len(d) for d in drafts)
        if self.tok_s is None or self.fixed_s is None:
            return 1 + longest
        best, best_rate = 1, n / (self.fixed_s + n * self.tok_s)
        for t in range(2, longest + 2):
            gain = sum(a * min(len(d), t - 1) for a, d in zip(acceptance, drafts))
            rate = (n + gain) / (self.fixed_s + n * t * self.tok_s)
            if rate > best_rate:
                best, best_rate = t, rate
        return best
