"""``--device`` on finetune, eval, generate and bench: ``cpu`` runs, ``auto`` is the CPU on a machine
without CUDA, and a device that is not there is one line, exit 2, before any weights load and with
nothing written."""

import json
import sqlite3

import pytest
import torch

from efflm.cli import main

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
LORA = "method: lora\nr: 4\ntrain: {steps: 2, batch: 2, seq_len: 32, warmup: 1}\n"


def one_line_error(capsys, code, pattern):
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("efflm: error:"), err
    assert pattern in lines[0], lines[0]


def envs(db):
    with sqlite3.connect(db) as c:
        return [json.loads(e) for (e,) in c.execute("select env from runs")]


@no_gpu
@pytest.mark.parametrize(
    "spec,pattern", [("cuda", "no CUDA GPU"), ("cuda:3", "no CUDA GPU"), ("gpu", "unknown device")]
)
def test_a_device_that_is_not_there_is_refused_before_any_work(spec, pattern, tmp_path, capsys, monkeypatch):
    import efflm.io.load

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the device was checked")

    monkeypatch.setattr(efflm.io.load, "load", no_weights)
    (tmp_path / "r.yaml").write_text(LORA)
    tiny = ["--model", "tiny-llama", "--device", spec]
    runs = [
        ["finetune", *tiny, "--method-recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "ft"),
         "--db", str(tmp_path / "ft.db")],
        ["eval", *tiny, "--seq-len", "32", "--windows", "1"],
        ["generate", *tiny, "--max-new-tokens", "2", "hi"],
        ["bench", *tiny, "--methods", "dense", "--db", str(tmp_path / "b.db"), "--out-dir", str(tmp_path / "b")],
    ]  # fmt: skip
    for argv in runs:
        one_line_error(capsys, main(argv), pattern)
    assert list(tmp_path.iterdir()) == [tmp_path / "r.yaml"]  # nothing written


def test_device_cpu_runs_eval_and_generate(capsys):
    assert main(["eval", "--model", "tiny-llama", "--device", "cpu", "--seq-len", "32", "--windows", "1"]) == 0
    assert capsys.readouterr().out.startswith("ppl ")
    assert main(["generate", "--model", "tiny-llama", "--device", "cpu", "--max-new-tokens", "3", "hi"]) == 0
    assert "bandwidth ceiling" in capsys.readouterr().err  # the CPU's ceiling, said on the CPU only


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_finetune_on_the_cpu_records_its_device(device, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(LORA)
    argv = ["finetune", "--model", "tiny-llama", "--method-recipe", str(tmp_path / "r.yaml"), "--data", "domain",
            "--out", str(tmp_path / "o"), "--db", str(tmp_path / "r.db"), "--device", device]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    gpu = device == "auto" and torch.cuda.is_available()
    meta = json.loads((tmp_path / "o" / "efflm_adapter.json").read_text())
    assert meta["train"]["bf16"] is gpu  # auto: on for a GPU, off on the CPU; recorded as what ran
    assert ("gpu_peak_mb" in meta["metrics"]) is gpu
    (env,) = envs(tmp_path / "r.db")
    assert env["device"].startswith("cuda:0 (") if gpu else env["device"] == "cpu"


def test_bench_passes_the_device_to_its_workers_and_records_it(tmp_path, capsys):
    argv = ["bench", "--model", "tiny-llama", "--methods", "dense", "--device", "auto", "--db", str(tmp_path / "b.db"),
            "--out-dir", str(tmp_path / "b"), "--seq-len", "32", "--windows", "1", "--prompt-len", "8",
            "--new-tokens", "3", "--reps", "1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (env,) = envs(tmp_path / "b.db")
    assert env["device"].startswith("cuda:0 (") if torch.cuda.is_available() else env["device"] == "cpu"


def test_bench_with_ray_takes_the_device_each_task_resolves(capsys):
    from efflm.bench.runner import worker_device
    from efflm.core.errors import EfflmError

    assert worker_device("cpu") == "cpu" and worker_device("auto", "ray") == "auto"
    assert worker_device("cuda", "ray", gpus_per_row=1) == "cuda"
    with pytest.raises(EfflmError, match="gpus-per-row"):
        worker_device("cuda", "ray")
    with pytest.raises(EfflmError, match="give auto, cpu or cuda"):
        worker_device("cuda:1", "ray", gpus_per_row=1)
