import math

import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.eval import metrics
from efflm.methods import config_from_dict, get


def test_perplexity_counts_tokens_and_matches_manual_nll(tiny):
    model, _ = tiny
    ids = torch.randint(3, 259, (300,), generator=torch.Generator().manual_seed(0))
    r = metrics.perplexity(model, ids, seq_len=64, n_windows=3)
    assert r["eval_tokens"] == 3 * 63 and r["windows"] == 3
    nll = 0.0
    for i in range(3):
        w = ids[i * 64 : (i + 1) * 64]
        logp = torch.log_softmax(model(w[None]).logits[0, :-1].float(), -1)
        nll -= logp.gather(-1, w[1:, None]).sum().item()
    assert r["ppl"] == pytest.approx(math.exp(nll / (3 * 63)), rel=1e-5)


def test_perplexity_rejects_text_shorter_than_a_window(tiny):
    with pytest.raises(EfflmError, match="text too short"):
        metrics.perplexity(tiny[0], torch.arange(10), seq_len=64)


def test_bytes_count_tied_weights_once_and_packed_sizes(tiny):
    model, _ = tiny
    params = {p.data_ptr(): p.numel() * 4 for p in model.parameters()}  # lm_head tied: one entry
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary inv_freq
    assert len(params) == len(list(model.parameters())) and buffers < 1000
    assert metrics.model_bytes(model) == sum(params.values()) + buffers
    dense = metrics.model_bytes(model)
    get("rtn").apply(model, config_from_dict({"method": "rtn", "bits": 4, "group_size": 32}), None)
    linears = sum(m.numel() for n, m in model.named_buffers() if n.endswith(("qweight", "scales")))
    assert metrics.model_bytes(model) < dense * 0.6
    assert linears > 0


def test_speed_reports_median_and_spread_of_the_timed_runs(tiny, monkeypatch):
    calls = []
    runs = iter([(9.0, 9.0, 1), (0.1, 1.0, 64), (0.3, 0.5, 64), (0.2, 2.0, 64)])  # warm-up first

    def fake(model, prompt, new_tokens):
        calls.append(new_tokens)
        return next(runs)

    monkeypatch.setattr(metrics, "_greedy", fake)
    r = metrics.speed(tiny[0], torch.arange(3, 19), new_tokens=4, reps=3, reference=False)
    assert calls == [4, 4, 4, 4]  # one warm-up (not counted), then the timed runs
    assert (r["tok_s"], r["tok_s_min"], r["tok_s_max"]) == (3.0, 1.5, 6.0)  # 3 decode steps / seconds
    assert r["ttft_ms"] == pytest.approx(200.0) and r["ttft_ms_max"] == pytest.approx(300.0)
    assert r["kv_bytes"] == 64


def test_speed_on_the_decode_path_times_exactly_the_asked_tokens(tiny):
    r = metrics.speed(tiny[0], torch.arange(3, 19), new_tokens=5, reps=1, reference=False)
    assert r["new_tokens"] == 5 and r["tok_s"] > 0 and r["ttft_ms"] > 0
    assert r["kv_bytes"] == 2 * 2 * 2 * (16 + 5) * 16 * 4  # k+v, layers, kv heads, slots, head_dim, fp32


def test_bandwidth_is_positive_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLM_CACHE", str(tmp_path))
    monkeypatch.setattr(metrics, "measure_bandwidth", lambda: 12.5)
    assert metrics.bandwidth_gbs() == 12.5
    monkeypatch.setattr(metrics, "measure_bandwidth", lambda: 99.0)
    assert metrics.bandwidth_gbs() == 12.5


def test_measured_bandwidth_is_bytes_over_the_best_time(monkeypatch):
    times = iter([0.04, 0.02, 0.03])
    monkeypatch.setattr(metrics, "_timed", lambda fn: next(times))
    assert metrics.measure_bandwidth(mib=64, reps=3) == pytest.approx(64 * 2**20 / 0.02 / 1e9)


def test_commit_is_dirty_for_code_changes_only(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from efflm.eval import env

    repo = tmp_path / "repo"
    (repo / "efflm" / "eval").mkdir(parents=True)
    (repo / "results").mkdir()
    fake = repo / "efflm" / "eval" / "env.py"
    shutil.copy(env.__file__, fake)
    (repo / "results" / "leaderboard.md").write_text("old")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    monkeypatch.setattr(env, "__file__", str(fake))
    clean = env.git_commit()
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (repo / "results" / "leaderboard.md").write_text("rewritten by a benchmark run")
    assert env.git_commit() == clean
    (repo / "efflm" / "new_method.py").write_text("x = 1\n")
    assert env.git_commit() == clean + "-dirty"
