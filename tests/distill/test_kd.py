"""Distillation through ``efflm finetune --teacher``: the objective equals the divergence on full
logits, KD brings a compressed student towards its teacher, GKD's on-policy batches, the layer
map, resume, and bad input refused before any work."""

import pytest
import torch
import yaml

from efflm import trainer
from efflm.cli import main
from efflm.distill.gkd import on_policy, prompt_lengths
from efflm.distill.hidden import hidden_mse, layer_map
from efflm.distill.objective import DistillHooks
from efflm.finetune.train import LossModel
from efflm.methods import config_from_dict, get
from efflm.models.sources import ready
from efflm.models.tiny import tiny_llama

TRAIN = {"steps": 3, "batch": 2, "seq_len": 64, "lr": 1e-3, "checkpoint_every": 1}
PRUNED = [config_from_dict({"method": "magnitude", "sparsity": 0.5})]


def batch(seed=0, n=2, t=24):
    ids = torch.randint(3, 259, (n, t), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def student_and_teacher(method="kd", **fields):
    cfg = config_from_dict({"method": method, "adapt": "full", **fields})
    student = get("magnitude").apply(ready(tiny_llama()[0]), PRUNED[0], None)
    student = get(method).apply(student, cfg, None)
    hooks = DistillHooks(cfg)
    hooks.attach(ready(tiny_llama()[0]))
    return student, hooks, cfg


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk", [0, 7])
def test_the_objective_is_the_divergence_of_full_logits(divergence, chunk):
    from efflm.distill import divergence as div

    student, hooks, cfg = student_and_teacher(divergence=divergence, temperature=2.0, beta=0.3)
    b = batch()
    got = hooks.loss(LossModel(student, chunk), b)
    s_logits = student(b["input_ids"]).logits[:, :-1].reshape(-1, 259)
    with torch.no_grad():
        t_logits = hooks.teacher(b["input_ids"]).logits[:, :-1].reshape(-1, 259)
    fn = {"forward_kl": lambda s, t: div.forward_kl(s, t, 2.0), "reverse_kl": lambda s, t: div.reverse_kl(s, t, 2.0),
          "jsd": lambda s, t: div.generalized_jsd(s, t, 0.3, 2.0)}[divergence]  # fmt: skip
    want = fn(s_logits, t_logits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(got, student.model.layers[0].mlp.up_proj.weight)[0]
    g_want = torch.autograd.grad(fn(student(b["input_ids"]).logits[:, :-1].reshape(-1, 259), t_logits),
                                 student.model.layers[0].mlp.up_proj.weight)[0]  # fmt: skip
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-7)


def test_ce_weight_mixes_cross_entropy_and_hidden_matching_adds_a_term():
    from efflm.finetune.loss import chunked_cross_entropy

    b = batch()
    student, hooks, _ = student_and_teacher()
    kd = hooks.loss(LossModel(student, 0), b)
    lm = LossModel(student, 0)
    ce = chunked_cross_entropy(
        lm.hidden(b["input_ids"], b["attention_mask"]).last_hidden_state, lm.head, b["labels"], 0
    )
    _, mixed, _ = student_and_teacher(ce_weight=0.25)
    torch.testing.assert_close(mixed.loss(lm, b), 0.75 * kd + 0.25 * ce)
    _, with_hidden, _ = student_and_teacher(hidden_weight=1.0)
    assert float(with_hidden.loss(lm, b).detach()) > float(
        kd.detach()
    )  # a pruned student's states differ from the teacher's


def test_layer_map_spreads_a_shallow_student_over_the_teacher():
    assert layer_map(2, 4) == [1, 3] and layer_map(3, 12) == [3, 7, 11] and layer_map(4, 4) == [0, 1, 2, 3]
    states = tuple(torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    assert float(hidden_mse(states, states, (), torch.ones(1, 5))) == 0.0


def test_kd_brings_a_pruned_student_towards_its_teacher(tmp_path):
    p = tmp_path / "kd.yaml"
    p.write_text(yaml.safe_dump({"method": "kd", "adapt": "full", "train": {**TRAIN, "steps": 8}}))
    cfg, train_cfg = trainer.read_method_recipe(p)
    r = trainer.finetune("tiny-llama", PRUNED, cfg, train_cfg, "domain", tmp_path / "o", teacher="tiny-llama")
    assert r["losses"][-1] < 0.7 * r["losses"][0]  # the divergence to the teacher shrinks
    assert (tmp_path / "o" / "model").is_dir()


def test_gkd_on_policy_batch_keeps_the_prompt_and_labels_only_the_students_tokens():
    model = ready(tiny_llama()[0])
    b = batch(t=20)
    b["labels"][1, :6] = -100  # row 1 has a 6-token prompt; row 0 is plain text (half)
    assert prompt_lengths(b["labels"], b["attention_mask"]) == [10, 6]
    out = on_policy(model, b, temperature=1.0, seed=3)
    assert torch.equal(out["input_ids"][0, :10], b["input_ids"][0, :10])
    assert torch.equal(out["input_ids"][1, :6], b["input_ids"][1, :6])
    assert (out["labels"][0, :10] == -100).all() and (out["labels"][1, :6] == -100).all()
    n0 = int(out["attention_mask"][0].sum())
    assert torch.equal(out["labels"][0, 10:n0], out["input_ids"][0, 10:n0]) and n0 <= 20
    again = on_policy(model, b, temperature=1.0, seed=3)
    assert all(torch.equal(out[k], again[k]) for k in out)  # a function of the seed


@pytest.mark.parametrize("method", ["kd", "gkd"])
def test_resume_equals_the_uninterrupted_distillation(method, tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump({"method": method, "r": 4, **({"lmbda": 0.5} if method == "gkd" else {}),
                                 "train": TRAIN}))  # fmt: skip
    cfg, train_cfg = trainer.read_method_recipe(p)
    full = trainer.finetune("tiny-llama", PRUNED, cfg, train_cfg, "domain", tmp_path / "a", teacher="tiny-llama")
    trainer.finetune("tiny-llama", PRUNED, cfg, train_cfg, "domain", tmp_path / "b", stop_at=2, teacher="tiny-llama")
    resumed = trainer.finetune("tiny-llama", PRUNED, cfg, train_cfg, "domain", tmp_path / "b", resume=True,
                            teacher="tiny-llama")  # fmt: skip
    assert resumed["losses"] == full["losses"] and (tmp_path / "b" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    "recipe,extra,message",
    [
        ("method: kd\n", [], "give --teacher"),
        ("method: lora\n", ["--teacher", "tiny-llama"], "is for distillation methods"),
        ("method: kd\n", ["--teacher", "smollm2-135m"], "vocabulary"),
        ("method: gkd\nlmbda: 1.5\n", ["--teacher", "tiny-llama"], "lmbda must be in [0, 1]"),
        ("method: kd\nbeta: 2\n", ["--teacher", "tiny-llama"], "beta must be in [0, 1]"),
        ("method: kd\ntemperature: 0\n", ["--teacher", "tiny-llama"], "temperature must be > 0"),
        ("method: kd\nhidden_layers: [5]\n", ["--teacher", "tiny-llama"], "outside the student's 2 layers"),
        ("method: kd\n", ["--teacher-recipe", "x.yaml"], "--teacher-recipe needs --teacher"),
        ("method: kd\n", ["--teacher", "tiny-llama", "--data", "EMPTY"], "no rows"),
        ("method: lomo\ntrain: {grad_accum: 2, batch: 4}\n", [], "grad_accum must be 1"),
    ],
)
def test_bad_distillation_input_is_one_line_and_writes_nothing(tmp_path, capsys, recipe, extra, message):
    p = tmp_path / "r.yaml"
    p.write_text(recipe)
    (tmp_path / "empty.jsonl").write_text("")
    extra = [str(tmp_path / "empty.jsonl") if e == "EMPTY" else e for e in extra]
    out = tmp_path / "out"
    rc = main(["finetune", "--model", "tiny-llama", "--method-recipe", str(p), "--out", str(out),
               "--db", str(tmp_path / "r.sqlite"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("efflm: error:") and message in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "r.sqlite").exists()


def test_bench_suite_recover_distills_every_base_and_each_is_a_leaderboard_row(tmp_path, capsys):
    from efflm.bench import db as results
    from efflm.bench.suites import recover_suite

    db = tmp_path / "r.sqlite"
    code = main(f"bench --model tiny-llama --suite recover --train-steps 3 --db {db} --out-dir {tmp_path}".split())
    assert code == 0
    rows = results.open_readonly(db).execute("SELECT label, status, families FROM runs").fetchall()
    assert len(rows) == len(recover_suite()) and all(r["status"] == "ok" for r in rows)
    assert all("distill" in r["families"] and "kd(" in r["label"] for r in rows)
    assert "kd(" in capsys.readouterr().out and "[domain, 3 steps]" in rows[0]["label"]  # the leaderboard printed


def test_llm_qat_trains_through_fake_quantization_and_packs_into_the_real_format(tmp_path):
    from efflm.io.load import load
    from efflm.nn import efflm_modules

    p = tmp_path / "q.yaml"
    train = {**TRAIN, "steps": 8, "lr": 1e-4}
    p.write_text(yaml.safe_dump({"method": "llm_qat", "bits": 3, "group_size": 32, "train": train}))
    cfg, train_cfg = trainer.read_method_recipe(p)
    r = trainer.finetune("tiny-llama", [], cfg, train_cfg, "domain", tmp_path / "o", teacher="tiny-llama")
    assert max(r["losses"][-3:]) < r["losses"][0]  # the fake-quantized student moves towards the teacher
    model, _ = load(str(tmp_path / "o" / "model"))
    kinds = {type(m).__name__ for m in efflm_modules(model).values()}
    assert kinds == {"QuantLinear"} and len(efflm_modules(model)) == 14  # 2 layers × 7 Linears, packed


def test_teacher_written_data_trains_as_jsonl(tmp_path, capsys):
    import json

    out = tmp_path / "free.jsonl"
    assert main(["distill-data", "--teacher", "tiny-llama", "--n", "5", "--max-new-tokens", "12",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert 1 <= len(rows) <= 5 and all(set(r) == {"text"} for r in rows)
    from efflm.datasets.finetune import read_jsonl
    from efflm.models.tiny import tiny_tokenizer

    assert all(n_prompt == 0 and ids for ids, n_prompt in read_jsonl(out, tiny_tokenizer())[0])  # every token trains
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one two"}\n{"prompt": "three"}\n')
    seq = tmp_path / "seq.jsonl"
    assert main(["distill-data", "--teacher", "tiny-llama", "--prompts", str(prompts), "--temperature", "0",
                 "--max-new-tokens", "6", "--out", str(seq)]) == 0  # fmt: skip
    rows = [json.loads(x) for x in seq.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["one two", "three"] and all("completion" in r for r in rows)
    assert main(["distill-data", "--teacher", "tiny-llama", "--out", str(tmp_path / "x.txt")]) == 2
    assert "must name a .jsonl file" in capsys.readouterr().err
