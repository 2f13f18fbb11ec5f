"""The training loop, data and commands on tiny-llama."""

import json

import pytest
import torch
import yaml

from efflm import trainer
from efflm.cli import main
from efflm.datasets import finetune as ftdata
from efflm.finetune.loss import chunked_cross_entropy
from efflm.finetune.train import TrainConfig
from efflm.models.tiny import tiny_tokenizer
from tests.finetune.conftest import TINY_CONFIGS

RECIPE = "method: {method}\nr: 4\ntrain:\n  steps: 4\n  batch: 2\n  seq_len: 256\n  warmup: 1\n  checkpoint_every: 2\n"


@pytest.fixture
def lora_yaml(tmp_path):
    p = tmp_path / "lora.yaml"
    p.write_text(RECIPE.format(method="lora"))
    return p


def test_chunked_cross_entropy_equals_the_full_logits_loss_and_gradients():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(2, 9, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (2, 9), generator=g)
    y[0, :3] = -100
    full = torch.nn.functional.cross_entropy(head(h)[:, :-1].reshape(-1, 50), y[:, 1:].reshape(-1), ignore_index=-100)
    want = torch.autograd.grad(full, (h, head.weight))
    for chunk in (4, 5, 1000, 0):  # chunks that split unevenly, one chunk, and the plain path
        loss = chunked_cross_entropy(h, head, y, chunk=chunk)
        got = torch.autograd.grad(3 * loss, (h, head.weight))  # a scaled loss scales both gradients
        torch.testing.assert_close(loss, full)
        torch.testing.assert_close(got[0], 3 * want[0])
        torch.testing.assert_close(got[1], 3 * want[1])


def test_resume_reproduces_the_uninterrupted_loss_curve(lora_yaml, tmp_path):
    cfg, train_cfg = trainer.read_method_recipe(lora_yaml)
    full = trainer.finetune("tiny-llama", [], cfg, train_cfg, "tasks", tmp_path / "a")
    trainer.finetune("tiny-llama", [], cfg, train_cfg, "tasks", tmp_path / "b", stop_at=2)
    assert not (tmp_path / "b" / "adapter_config.json").exists()  # interrupted: only the checkpoint
    resumed = trainer.finetune("tiny-llama", [], cfg, train_cfg, "tasks", tmp_path / "b", resume=True)
    assert resumed["losses"] == full["losses"]  # bit-exact: every random choice is f(seed, step)
    assert (tmp_path / "a" / "loss.png").is_file()
    meta = json.loads((tmp_path / "a" / "efflm_adapter.json").read_text())
    assert meta["base"]["spec"] == "tiny-llama" and meta["metrics"]["trainable_params"] > 0


def test_training_lowers_the_loss(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(4)))
    p = tmp_path / "r.yaml"
    p.write_text("method: lora\nr: 8\ntrain:\n  steps: 30\n  batch: 4\n  seq_len: 256\n  lr: 0.01\n  warmup: 2\n")
    cfg, train_cfg = trainer.read_method_recipe(p)
    r = trainer.finetune("tiny-llama", [], cfg, train_cfg, str(data), tmp_path / "o")
    # tiny-llama's frozen tied head (embeddings of std 0.02 after a unit RMSNorm) caps its logits near
    # ±1.3, so even four memorised rows keep a loss near 4.5 nats; the drop from ln(259) ≈ 5.56 is the signal
    assert sum(r["losses"][-5:]) / 5 < sum(r["losses"][:5]) / 5 - 0.5


def test_tasks_are_deterministic_and_train_test_disjoint():
    a, b = ftdata.tasks("train", 300), ftdata.tasks("train", 300)
    test = ftdata.tasks("test", 100)
    assert a == b
    assert not {t.prompt for t in a} & {t.prompt for t in test}
    assert {t.kind for t in test} == {"arithmetic", "reverse", "sort", "convert", "weekday"}


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "a"}', "missing fields"),
        ('{"prompt": "a", "completion": " "}', "empty"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "ending with the assistant"),
        ('{"prompt": "' + "x" * 300 + '", "completion": "y"}', "no completion token within train.seq_len 256"),
    ],
)
def test_jsonl_bad_rows_name_file_and_line(tmp_path, line, message):
    from efflm.core.errors import EfflmError

    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "2+2?", "completion": "4"}\n' + line + "\n")
    with pytest.raises(EfflmError, match=f"d.jsonl:2: .*{message}"):
        ftdata.read_jsonl(f, tiny_tokenizer(), max_tokens=256)


def test_jsonl_loss_covers_completion_tokens_only(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "2+2?", "completion": "4"}\n')
    ((ids, n_prompt),), truncated = ftdata.read_jsonl(f, tiny_tokenizer())
    assert truncated == 0
    b = ftdata.collate([(ids, n_prompt)], 2, 256)
    assert (b["labels"][0, :n_prompt] == -100).all() and (b["labels"][0, n_prompt:] != -100).all()


@pytest.mark.parametrize(
    "recipe,extra,message",
    [
        ("method: lora\ntarget_modules: [q_prj]\n", [], "did you mean 'q_proj'"),
        ("method: lora\nr: 100\n", [], "exceeds"),
        ("method: rtn\n", [], "not a fine-tuning or distillation method"),
        ("method: lora\ntrain:\n  stepz: 3\n", [], "did you mean 'steps'"),
        ("method: lora\n", ["--data", "nope.txt"], "--data must be"),
        ("method: lora\n", ["--resume"], "not a fine-tuning output directory"),
    ],
)
def test_finetune_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, recipe, extra, message):
    p = tmp_path / "r.yaml"
    p.write_text(recipe)
    out = tmp_path / "out"
    rc = main(
        [
            "finetune",
            "--model",
            "tiny-llama",
            "--method-recipe",
            str(p),
            "--out",
            str(out),
            "--db",
            str(tmp_path / "r.sqlite"),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("efflm: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_resume_with_another_config_is_refused(lora_yaml, tmp_path, capsys):
    out = tmp_path / "o"
    cfg, train_cfg = trainer.read_method_recipe(lora_yaml)
    trainer.finetune("tiny-llama", [], cfg, train_cfg, "tasks", out, stop_at=2)
    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.format(method="dora"))
    rc = main(
        [
            "finetune",
            "--model",
            "tiny-llama",
            "--method-recipe",
            str(other),
            "--data",
            "tasks",
            "--out",
            str(out),
            "--resume",
        ]
    )
    assert rc == 2 and "different base, method" in capsys.readouterr().err


def test_finetune_then_eval_generate_and_merge_from_the_command_line(lora_yaml, tmp_path, capsys):
    out = tmp_path / "ad"
    assert (
        main(
            [
                "finetune",
                "--model",
                "tiny-llama",
                "--method-recipe",
                str(lora_yaml),
                "--data",
                "tasks",
                "--out",
                str(out),
                "--db",
                str(tmp_path / "r.sqlite"),
            ]
        )
        == 0
    )
    assert main(["eval", "--model", "tiny-llama", "--adapter", str(out), "--seq-len", "64", "--windows", "1"]) == 0
    assert main(["generate", "hello", "--model", "tiny-llama", "--adapter", str(out), "--max-new-tokens", "3"]) == 0
    assert main(["merge", "--model", "tiny-llama", "--adapter", str(out), "--out", str(tmp_path / "m")]) == 0
    assert "merged 14 adapters into the dense base" in capsys.readouterr().out
    from efflm.io.load import load

    merged, _ = load(str(tmp_path / "m"))
    base, _ = trainer.load_model("tiny-llama", [], out)
    ids = torch.randint(3, 250, (1, 10))
    torch.testing.assert_close(merged(ids).logits, base(ids).logits, atol=1e-5, rtol=0)


def test_merge_into_a_quantized_base_reports_the_drift(tmp_path, capsys):
    recipe = tmp_path / "rtn.yaml"
    recipe.write_text("- method: rtn\n  bits: 4\n  group_size: 32\n")
    tune_yaml = tmp_path / "l.yaml"
    tune_yaml.write_text(RECIPE.format(method="lora").replace("steps: 4", "steps: 2"))
    out = tmp_path / "ad"
    args = ["--model", "tiny-llama", "--recipe", str(recipe)]
    db = ["--db", str(tmp_path / "r.sqlite")]
    assert main(["finetune", *args, "--method-recipe", str(tune_yaml), "--data", "tasks", "--out", str(out), *db]) == 0
    assert main(["merge", *args, "--adapter", str(out), "--out", str(tmp_path / "m")]) == 0
    assert "re-quantized on the base's grid: perplexity" in capsys.readouterr().out
    # the adapter names its base: loading it on the dense model is refused before any weights load
    assert main(["eval", "--model", "tiny-llama", "--adapter", str(out), "--seq-len", "64", "--windows", "1"]) == 2
    assert "another base" in capsys.readouterr().err


def test_train_config_validates():
    from efflm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of grad_accum"):
        TrainConfig(batch=3, grad_accum=2)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="exp")


def test_a_finetune_method_in_a_compression_recipe_is_refused(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("- method: lora\n")
    assert main(["eval", "--model", "tiny-llama", "--recipe", str(r)]) == 2
    assert "train it with `efflm finetune" in capsys.readouterr().err


def test_bench_suite_finetune_trains_lora_on_every_base_and_each_is_a_leaderboard_row(tmp_path, capsys):
    from efflm.bench import db as results
    from efflm.bench.suites import finetune_suite

    db = tmp_path / "r.sqlite"
    assert (
        main(f"bench --model tiny-llama --suite finetune --train-steps 3 --db {db} --out-dir {tmp_path}".split()) == 0
    )
    rows = results.open_readonly(db).execute("SELECT label, status, families FROM runs").fetchall()
    assert len(rows) == len(finetune_suite()) and all(r["status"] == "ok" for r in rows)
    assert all("finetune" in r["families"] and "lora(" in r["label"] for r in rows)
    assert "[domain, 3 steps]" in capsys.readouterr().out  # the leaderboard printed after the suite
    code = main(["bench", "--model", "tiny-llama", "--methods", "rtn", "--train-steps", "3", "--db", str(db)])
    assert code == 2 and "--train-steps goes with --suite finetune" in capsys.readouterr().err


def test_merge_refuses_an_adapter_that_is_not_a_weight_update(tmp_path, capsys):
    p = tmp_path / "a.yaml"
    p.write_text(
        "method: llama_adapter\nadapter_len: 4\nadapter_layers: 1\ntrain:\n  steps: 1\n  batch: 1\n  seq_len: 256\n"
    )
    out = tmp_path / "ad"
    assert main(["finetune", "--model", "tiny-llama", "--method-recipe", str(p), "--data", "tasks", "--out", str(out),
                 "--db", str(tmp_path / "r.sqlite")]) == 0  # fmt: skip
    assert main(["merge", "--model", "tiny-llama", "--adapter", str(out), "--out", str(tmp_path / "m")]) == 2
    assert "cannot be merged" in capsys.readouterr().err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_method_trains_saves_and_is_recorded(name, tmp_path):
    from efflm.bench import db as results

    p = tmp_path / "m.yaml"
    p.write_text(
        yaml.safe_dump({"method": name, **TINY_CONFIGS[name], "train": {"steps": 2, "batch": 2, "seq_len": 64}})
    )
    cfg, train_cfg = trainer.read_method_recipe(p)
    r = trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "o", db=tmp_path / "r.sqlite")
    assert r["trainable_params"] > 0 and (tmp_path / "o" / "adapter_model.safetensors").is_file()
    row = results.open_readonly(tmp_path / "r.sqlite").execute("SELECT status, tok_s, ppl FROM runs").fetchone()
    assert row["status"] == "ok" and row["tok_s"] > 0 and row["ppl"] > 0  # measured on the decode path too


def test_chunked_cross_entropy_without_grad_is_the_same_loss():
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(16, 40, bias=False)
    hidden, labels = torch.randn(2, 9, 16, generator=g), torch.randint(0, 40, (2, 9), generator=g)
    labels[0, :3] = -100
    want = chunked_cross_entropy(hidden, head, labels, 4)
    with torch.no_grad():  # MeZO's evaluations: the loss alone, no gradient made
        got = chunked_cross_entropy(hidden, head, labels, 4)
    torch.testing.assert_close(got, want.detach())


def test_freed_memory_is_returned_on_glibc():
    import platform

    from efflm.core.memory import return_freed_memory, trim_heap

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert return_freed_memory() == glibc
    trim_heap()  # runs anywhere (False where there is no glibc); its effect is the streamed runs' measured peaks


def test_checkpoint_saves_parameters_without_copying_them_and_views_compactly():
    from efflm.trainer.checkpoints import _own

    whole = torch.nn.Parameter(torch.randn(4, 3))
    assert _own(whole).data_ptr() == whole.data_ptr()  # a full model's checkpoint adds no copy of it
    view = torch.randn(8, 3)[2:4]
    saved = _own(view)
    assert saved.data_ptr() != view.data_ptr() and saved.untyped_storage().nbytes() == 2 * 3 * 4
    assert torch.equal(saved, view)


def test_jsonl_rows_longer_than_seq_len_are_truncated_and_counted(tmp_path):
    """trl's SFT behaviour: a long row keeps its first train.seq_len tokens; the count is reported."""
    f = tmp_path / "d.jsonl"
    long_text = "word " * 200
    f.write_text(
        json.dumps({"text": long_text})
        + "\n"
        + json.dumps({"prompt": "2+2?", "completion": long_text})
        + "\n"
        + json.dumps({"prompt": "2+2?", "completion": "4"})
        + "\n"
    )
    rows, truncated = ftdata.read_jsonl(f, tiny_tokenizer(), max_tokens=64)
    assert truncated == 2 and [len(ids) for ids, _ in rows][:2] == [64, 64]
    ids, n_prompt = rows[1]
    assert 0 < n_prompt < 64  # the prompt kept whole, the completion cut
    b = ftdata.collate([rows[1]], 2, 64)
    assert (b["labels"][0, n_prompt:] != -100).all()


def test_training_leaves_the_global_rng_as_it_was():
    """Per-step seeding (dropout) happens inside a forked RNG: no process-wide side effect."""
    from efflm.finetune.hooks import TrainHooks
    from efflm.finetune.train import train
    from efflm.io.load import load
    from efflm.methods import config_from_dict, get

    model, _ = load("tiny-llama")
    lora = config_from_dict({"method": "lora", "r": 4})
    model = get("lora").apply(model, lora, None)
    cfg = TrainConfig(steps=2, batch=2, seq_len=16, warmup=1)
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))

    def batch_at(step, micro, n_micro):
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    state = train(model, cfg, batch_at, hooks=TrainHooks(lora))
    assert state.step == 2 and torch.equal(torch.rand(4), expected)


def test_no_eval_writes_the_adapter_but_no_evaluation_and_no_row(tmp_path, lora_yaml, capsys, monkeypatch):
    """--no-eval (a model too big to evaluate in the time its training takes): the adapter and loss
    curve are written, the held-out evaluation never runs and no results row is recorded."""
    import efflm.trainer.run as run

    calls = []
    real = run.evaluator
    monkeypatch.setattr(run, "evaluator", lambda *a, **k: calls.append(k) or real(*a, **k))
    db, out = tmp_path / "r.sqlite", tmp_path / "ad"
    argv = ["finetune", "--model", "tiny-llama", "--method-recipe", str(lora_yaml), "--steps", "2", "--out", str(out)]
    assert main([*argv, "--db", str(db), "--no-eval"]) == 0
    printed = capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    assert "ppl" not in printed and not db.exists() and calls == []
