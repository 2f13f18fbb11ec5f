"""The top-k teacher cache: the file round-trips, k = vocab gives the exact divergence, a smaller k
keeps the tail's mass, a cached run equals a live-teacher run at k = vocab, and a cache made for
another run is refused before any weights load."""

import pytest
import torch
import yaml

from efflm import trainer
from efflm.cli import main
from efflm.distill import divergence as div
from efflm.distill.topk import TopKCache, bucketed, cached_divergence, packed, read_header, top_k, write

PRUNE = "- method: magnitude\n  sparsity: 0.5\n"


def logits(seed, n=6, v=50):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_the_cache_file_round_trips(tmp_path):
    ids = torch.randint(0, 259, (2, 3, 8))
    index, logp = top_k(logits(0, 2 * 3 * 7, 259).reshape(2, 3, 7, 259), 5)
    write(tmp_path / "c.topk", ids, index, logp, {"vocab": 259, "k": 5})
    c = TopKCache(tmp_path / "c.topk")
    assert torch.equal(c.ids, ids.int()) and torch.equal(c.index.long(), index)
    assert torch.allclose(c.logp.float(), logp, atol=1e-2) and c.logp.dtype == torch.float16
    assert c.index.dtype == torch.uint16 and read_header(tmp_path / "c.topk")["k"] == 5
    got_i, got_p = c.lookup(1, ids[1, [2, 0], :6])  # rows found by their tokens, any order, any prefix
    assert torch.equal(got_i, index[1, [2, 0], :5]) and got_p.shape == (2, 5, 5)
    (tmp_path / "x").write_bytes(b"not a cache")
    assert read_header(tmp_path / "x") is None


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_k_equal_to_the_vocabulary_is_the_exact_divergence(name):
    fn = {"forward_kl": div.forward_kl, "reverse_kl": div.reverse_kl, "jsd": div.generalized_jsd}[name]
    s, t = logits(1), logits(2)
    index, logp = top_k(t, 50)
    got = cached_divergence(fn)(s, packed(index, logp))
    torch.testing.assert_close(got, fn(s, t), rtol=1e-4, atol=1e-5)


def test_the_tail_bucket_holds_the_missing_mass():
    s, t = logits(3), logits(4)
    index, logp = top_k(t, 5)
    b = bucketed(s, index)
    assert torch.allclose(b.exp().sum(-1), torch.ones(6), atol=1e-5)  # k + 1 buckets: a distribution
    kl = cached_divergence(div.forward_kl)(s, packed(index, logp))
    assert 0 <= float(kl) <= float(div.forward_kl(s, t)) + 1e-5  # lumping never raises the KL


def test_a_cached_run_equals_the_live_teacher_run_at_full_k(tmp_path):
    p = tmp_path / "kd.yaml"
    p.write_text(yaml.safe_dump({"method": "kd", "adapt": "full", "train": {"steps": 3, "batch": 2, "seq_len": 32}}))
    (tmp_path / "pr.yaml").write_text(PRUNE)
    cfg, train_cfg = trainer.read_method_recipe(p)
    from efflm.core import recipe as recipes

    recipe = recipes.load(tmp_path / "pr.yaml")
    r = trainer.build_cache("tiny-llama", [], "tiny-llama", train_cfg, "domain", tmp_path / "c.topk", 259)
    assert r["bytes_per_token"] < 259 * 4 + 64
    live = trainer.finetune("tiny-llama", recipe, cfg, train_cfg, "domain", tmp_path / "a", teacher="tiny-llama")
    cached = trainer.finetune(
        "tiny-llama", recipe, cfg, train_cfg, "domain", tmp_path / "b", teacher_cache=tmp_path / "c.topk"
    )
    assert cached["losses"] == pytest.approx(live["losses"], abs=2e-4)  # the cache's fp16 log-probabilities


def test_the_objective_from_cached_rows_equals_the_live_teacher_at_full_k():
    from efflm.distill.objective import DistillHooks
    from efflm.finetune.train import LossModel
    from efflm.methods import config_from_dict, get
    from efflm.models.sources import ready
    from efflm.models.tiny import tiny_llama

    cfg = config_from_dict({"method": "kd", "adapt": "full"})
    prune = config_from_dict({"method": "magnitude", "sparsity": 0.5})
    student = get("kd").apply(get("magnitude").apply(ready(tiny_llama()[0]), prune, None), cfg, None)
    teacher = ready(tiny_llama()[0])
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(0))
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    live = DistillHooks(cfg)
    live.attach(teacher)
    index, logp = top_k(teacher(ids).logits[:, :-1].detach(), 259)
    cached = DistillHooks(cfg)
    lm = LossModel(student, 5)
    got = cached.loss(lm, {**b, "teacher_index": index, "teacher_logp": logp})
    torch.testing.assert_close(got, live.loss(lm, b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "recipe,extra,message",
    [
        ("method: kd\ntrain: {steps: 9, batch: 2, seq_len: 64}\n", [], "was made for train"),
        ("method: kd\ntrain: {steps: 2, batch: 2, seq_len: 64}\n", ["--data", "JSONL"], "other data"),
        ("method: kd\ntemperature: 2.0\ntrain: {steps: 2, batch: 2, seq_len: 64}\n", [], "temperature 1"),
        ("method: gkd\ntrain: {steps: 2, batch: 2, seq_len: 64}\n", [], "need a live teacher"),
        ("method: kd\ntrain: {steps: 2, batch: 2, seq_len: 64}\n", ["--teacher", "tiny-llama"], "not both"),
        ("method: kd\ntrain: {steps: 2, batch: 2, seq_len: 64}\n", ["NOTCACHE"], "not a top-k cache"),
    ],
)
def test_a_cache_made_for_another_run_is_refused(tmp_path, capsys, recipe, extra, message):
    made = tmp_path / "made.yaml"
    made.write_text("method: kd\ntrain: {steps: 3, batch: 2, seq_len: 64}\n")
    assert main(["distill-cache", "--teacher", "tiny-llama", "--model", "tiny-llama", "--method-recipe", str(made),
                 "--k", "8", "--out", str(tmp_path / "c.topk")]) == 0  # fmt: skip
    capsys.readouterr()
    (tmp_path / "junk.topk").write_bytes(b"junk")
    cache = str(tmp_path / ("junk.topk" if "NOTCACHE" in extra else "c.topk"))
    (tmp_path / "d.jsonl").write_text('{"prompt": "one two", "completion": "three four"}\n' * 3)
    extra = [str(tmp_path / "d.jsonl") if e == "JSONL" else e for e in extra if e != "NOTCACHE"]
    p = tmp_path / "r.yaml"
    p.write_text(recipe)
    out = tmp_path / "out"
    rc = main(["finetune", "--model", "tiny-llama", "--method-recipe", str(p), "--teacher-cache", cache,
               "--out", str(out), "--db", str(tmp_path / "r.sqlite"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("efflm: error:") and message in err and err.count("\n") == 1, err
    assert not out.exists()
