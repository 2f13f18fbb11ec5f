import json
import subprocess
import threading

import pytest

from efflm.bench import run_cache


@pytest.fixture
def version(monkeypatch):
    state = {"version": "abc123"}
    monkeypatch.setattr(run_cache, "code_version", lambda script=None: state["version"])
    monkeypatch.setattr("efflm.eval.env.git_commit", lambda: "c0ffee")
    return state


def test_a_finished_run_is_reused_on_the_same_code(tmp_path, version):
    cache, calls = tmp_path / "runs.json", []

    def compute():
        calls.append(1)
        return {"ppl": 12.5}

    assert run_cache.cached(str(cache), "a|b", compute) == {"ppl": 12.5}
    assert run_cache.cached(str(cache), "a|b", compute) == {"ppl": 12.5}
    assert len(calls) == 1
    assert json.loads(cache.read_text()) == {"abc123|a|b": {"commit": "c0ffee", "result": {"ppl": 12.5}}}
    version["version"] = "def456"  # other code measures again
    run_cache.cached(str(cache), "a|b", compute)
    assert len(calls) == 2


@pytest.mark.parametrize("state", ["abc123-dirty", "unknown"])
def test_a_dirty_or_unknown_tree_never_reuses_nor_stores(tmp_path, version, state):
    version["version"] = state
    cache, calls = tmp_path / "runs.json", []
    for _ in range(2):
        run_cache.cached(str(cache), "k", lambda: calls.append(1) or 1)
    assert len(calls) == 2 and not cache.exists()


def test_without_a_cache_file_it_just_computes(version):
    assert run_cache.cached(None, "k", lambda: 7) == 7


def test_workers_in_threads_all_land_in_the_file(tmp_path, version):
    cache, gate = tmp_path / "runs.json", threading.Barrier(4)

    def work(i):
        # all compute at once, then store (Barrier.wait returns the arrival index, so it is not the result)
        run_cache.cached(str(cache), f"k{i}", lambda: (gate.wait(), i)[1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert {k: v["result"] for k, v in json.loads(cache.read_text()).items()} == {f"abc123|k{i}": i for i in range(4)}


def test_the_version_follows_the_code_not_the_commit(tmp_path):
    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    (tmp_path / "efflm").mkdir()
    (tmp_path / "efflm" / "m.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "bench.py").write_text("print(1)\n")
    (tmp_path / "notes.md").write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    script = str(tmp_path / "bench.py")
    first = run_cache.code_version(script, tmp_path)
    assert len(first) == 12 and not first.endswith("-dirty")
    (tmp_path / "notes.md").write_text("b\n")  # results and docs: neither dirty nor a new version
    assert run_cache.code_version(script, tmp_path) == first
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "docs")
    assert run_cache.code_version(script, tmp_path) == first
    (tmp_path / "bench.py").write_text("print(2)\n")  # the script is code
    assert run_cache.code_version(script, tmp_path) == first + "-dirty"
    assert not run_cache.code_version(None, tmp_path).endswith("-dirty")  # unless it is the one asked about
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "code")
    assert run_cache.code_version(script, tmp_path) not in (first, first + "-dirty")
    assert run_cache.code_version(None, tmp_path / "nowhere") == "unknown"
