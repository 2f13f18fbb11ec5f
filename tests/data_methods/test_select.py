"""Data selection: DSIR follows the target distribution, IFD equals its definition, budgets hold,
and `efflm data select` keeps rows in order with one-line errors for bad input."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from efflm.cli import main
from efflm.data_methods import dsir, ifd, ppl_filter, random_select
from efflm.data_methods.budget import rows_for_fraction, select
from efflm.data_methods.context import DataContext
from efflm.datasets.finetune import encode_chat, tasks
from efflm.datasets.text import paragraphs


@pytest.fixture(scope="module")
def two_domains():
    plays = paragraphs("calib")[:60]  # domain A: Shakespeare
    problems = [f"{t.prompt} {t.answer}" for t in tasks("train", 80)]  # domain B: arithmetic tasks
    return plays, problems[:60], problems[60:]


def test_dsir_weights_follow_the_target_distribution(two_domains):
    plays, problems, target = two_domains
    raw = [x for pair in zip(plays, problems) for x in pair]  # interleaved A, B, A, B, ...
    lw = dsir.log_weights(raw, target, dsir.DSIRConfig())
    assert min(lw[1::2]) > max(lw[0::2])  # every target-like text outweighs every other
    scores = dsir.apply(raw, dsir.DSIRConfig(), DataContext(target=target))
    kept = select(scores, k=60)
    assert sum(i % 2 == 1 for i in kept) >= 57  # importance resampling keeps the target's domain
    assert dsir.apply(raw, dsir.DSIRConfig(), DataContext(target=target)) == scores  # seeded


def test_dsir_without_resampling_is_the_top_weights(two_domains):
    plays, problems, target = two_domains
    raw = plays + problems
    cfg = dsir.DSIRConfig(resample=False)
    assert dsir.apply(raw, cfg, DataContext(target=target)) == dsir.log_weights(raw, target, cfg).tolist()


def test_ifd_equals_its_definition_on_tiny_llama(tiny):
    model, tok = tiny
    prompt, completion = "add two and three", "five, since two plus three is five"
    ids, n_prompt = encode_chat(tok, prompt, completion)
    x = torch.tensor([ids])
    with torch.no_grad():
        cond = F.cross_entropy(model(x).logits[0, n_prompt - 1 : -1], x[0, n_prompt:]).item()
        alone = torch.tensor(
            [[tok.bos_token_id] + ids[n_prompt:]] if tok.bos_token_id is not None else [ids[n_prompt:]]
        )
        direct = F.cross_entropy(model(alone).logits[0, :-1], alone[0, 1:]).item()
    expected = math.exp(cond) / math.exp(direct)
    got = ifd.apply([(prompt, completion)], ifd.IFDConfig(drop_misaligned=False), DataContext(model, tok))
    assert got[0] == pytest.approx(expected, rel=1e-5)


def test_ppl_filter_keeps_the_part_of_the_distribution_asked(tiny):
    model, tok = tiny
    texts = ["a a a a a a a a", "the cat sat on the mat today", "zq xv kj wq pz", "hello world again"]
    nll = ppl_filter.text_nll(model, tok, texts, 64)
    for keep, best in (("low", min), ("high", max)):
        scores = ppl_filter.apply(texts, ppl_filter.PerplexityFilterConfig(keep=keep), DataContext(model, tok))
        assert nll[select(scores, k=1)[0]] == best(nll)
    mid = ppl_filter.keep_scores([1.0, 2.0, 3.0, 10.0, 2.6], "middle")
    assert select(mid, k=2) == [2, 4]  # nearest the median (2.6): 2.6 itself, then 3.0


def test_random_select_is_a_seeded_uniform_subset_blind_to_the_texts():
    texts = [f"row {i}" for i in range(2000)]
    cfg = random_select.RandomSelectConfig(seed=3)
    scores = random_select.apply(texts, cfg)
    assert scores == random_select.apply(texts[::-1], cfg)  # the same draw, whatever the texts say
    assert scores != random_select.apply(texts, random_select.RandomSelectConfig(seed=4))
    kept = select(scores, k=500)
    assert 200 < sum(i < 1000 for i in kept) < 300  # a uniform subset: about half from each half


def test_budgets_never_exceed_and_keep_input_order():
    scores = [0.5, 3.0, float("nan"), 2.0, 1.0]
    assert select(scores, k=2) == [1, 3]
    assert select(scores, k=5) == [0, 1, 2, 3, 4]
    costs = [10, 50, 5, 40, 20]
    kept = select(scores, costs=costs, max_cost=65)
    assert sum(costs[i] for i in kept) <= 65 and kept == [0, 1, 2]  # by score: 1 fits, 3 and 4 do not, 0 and 2 do
    assert rows_for_fraction(1000, 0.1) == 100 and rows_for_fraction(3, 0.01) == 1


def _rows(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def data(tmp_path, two_domains):
    plays, problems, target = two_domains
    raw = [{"id": i, "text": t} for i, t in enumerate(x for pair in zip(plays, problems) for x in pair)]
    return _rows(tmp_path, "raw.jsonl", raw), _rows(tmp_path, "target.jsonl", [{"text": t} for t in target])


def test_select_dsir_and_random_from_the_command_line(tmp_path, data, capsys):
    raw, target = data
    out = tmp_path / "dsir.jsonl"
    assert main(["data", "select", str(raw), "--out", str(out), "--method", "dsir", "--target", str(target),
                 "--budget", "0.25"]) == 0  # fmt: skip
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 30 and ids == sorted(ids) and sum(i % 2 for i in ids) >= 28
    rnd = tmp_path / "rnd.jsonl"
    assert main(["data", "select", str(raw), "--out", str(rnd), "--method", "random", "--budget", "0.25"]) == 0
    assert len(rnd.read_text().splitlines()) == 30
    report = json.loads((tmp_path / "rnd.jsonl.report.json").read_text())
    assert report["rows_in"] == 120 and report["rows_out"] == 30 and len(report["kept"]) == 30


def test_select_by_a_model_with_a_token_budget(tmp_path, capsys):
    rows = [{"prompt": t.prompt, "completion": t.answer, "n": i} for i, t in enumerate(tasks("train", 12))]
    src = _rows(tmp_path, "inst.jsonl", rows)
    for method in ("ifd", "ppl_filter"):
        out = tmp_path / f"{method}.jsonl"
        args = ["data", "select", str(src), "--out", str(out), "--method", method, "--model", "tiny-llama"]
        assert main([*args, "--budget-tokens", "60"]) == 0
        report = json.loads((tmp_path / f"{method}.jsonl.report.json").read_text())
        assert 0 < report["tokens_out"] <= 60 and report["rows_out"] == len(out.read_text().splitlines())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "random", "--budget", "0"], "must be in (0, 1]"),
        (["--method", "random", "--budget", "1.5"], "must be in (0, 1]"),
        (["--method", "random"], "one of the arguments --budget --budget-tokens is required"),
        (["--method", "random", "--budget-tokens", "10000000", "--model", "tiny-llama"], "larger than the input"),
        (["--method", "dsir", "--budget", "0.5"], "dsir needs a target sample"),
        (["--method", "random", "--budget", "0.5", "--target", "TARGET"], "--target is for dsir"),
        (["--method", "dsir", "--budget", "0.5", "--keep", "low", "--target", "TARGET"], "--keep is for ppl_filter"),
        (["--method", "ifd", "--budget", "0.5", "--model", "tiny-llama"], "raw.jsonl:1: an instruction row needs"),
        (["--method", "ppl_filter", "--budget", "0.5", "--model", "no/such-model"], "no/such-model"),
        (["--method", "dsir", "--budget", "0.5", "--target", "EMPTY"], "no rows (empty input)"),
    ],
)
def test_select_bad_input_is_one_line_and_writes_nothing(tmp_path, data, capsys, extra, message):
    raw, target = data
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    extra = [str(target) if e == "TARGET" else str(empty) if e == "EMPTY" else e for e in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["data", "select", str(raw), "--out", str(tmp_path / "o.jsonl"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error:") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
