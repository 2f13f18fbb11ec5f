import json

import pytest

from efflm.bench import run_cache


@pytest.fixture
def commit(monkeypatch):
    state = {"commit": "abc123"}
    monkeypatch.setattr("efflm.eval.env.git_commit", lambda: state["commit"])
    return state


def test_a_finished_run_is_reused_at_the_same_clean_commit(tmp_path, commit):
    cache, calls = tmp_path / "runs.json", []

    def compute():
        calls.append(1)
        return {"ppl": 12.5}

    assert run_cache.cached(str(cache), "a|b", compute) == {"ppl": 12.5}
    assert run_cache.cached(str(cache), "a|b", compute) == {"ppl": 12.5}
    assert len(calls) == 1
    assert json.loads(cache.read_text()) == {"abc123|a|b": {"ppl": 12.5}}
    commit["commit"] = "def456"  # another commit measures again
    run_cache.cached(str(cache), "a|b", compute)
    assert len(calls) == 2


@pytest.mark.parametrize("state", ["abc123-dirty", "unknown"])
def test_a_dirty_or_unknown_tree_never_reuses_nor_stores(tmp_path, commit, state):
    commit["commit"] = state
    cache, calls = tmp_path / "runs.json", []
    for _ in range(2):
        run_cache.cached(str(cache), "k", lambda: calls.append(1) or 1)
    assert len(calls) == 2 and not cache.exists()


def test_without_a_cache_file_it_just_computes(commit):
    assert run_cache.cached(None, "k", lambda: 7) == 7
