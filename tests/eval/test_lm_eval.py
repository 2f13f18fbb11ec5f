"""efflm inside lm-evaluation-harness: the offline tasks' data, ``EfflmLM`` against lm-eval's own
``hf`` model on the same weights, generation, and the command lines."""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from efflm.cli import main  # noqa: E402
from efflm.eval import lm_eval_run, offline_tasks  # noqa: E402
from efflm.eval.lm_eval_model import EfflmLM  # noqa: E402
from efflm.io.load import load  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    model, tok = load("tiny-llama")
    return model.eval(), tok


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


PAIRS = [
    ("The king is", " dead"),
    ("To be, or not to be: that is the ", "question"),
    ("", "Friends, Romans, countrymen"),
    ("A" * 300, " and the rest is silence"),  # longer than max_length 64: truncated from the left
]


def test_offline_task_data_regenerates_byte_identical():
    for name, rows in offline_tasks.task_files().items():
        shipped = (offline_tasks.TASK_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
        assert offline_tasks.dumps(rows) == shipped, f"{name}: run python -m efflm.eval.offline_tasks"


def test_offline_tasks_have_the_shapes_they_promise():
    files = offline_tasks.task_files()
    cloze, nextline = files["efflm_cloze"], files["efflm_nextline"]
    assert len(cloze) == offline_tasks.CLOZE_N and len(nextline) == offline_tasks.NEXTLINE_N
    assert len({r["play"] for r in cloze}) == 5 and len({r["play"] for r in nextline}) == 5
    for r in cloze:
        assert len(r["context"].split()) >= offline_tasks.CLOZE_WORDS and r["target"].isalpha() or "'" in r["target"]
    for r in nextline:
        assert len(set(r["choices"])) == offline_tasks.NEXTLINE_CHOICES and 0 <= r["label"] < 4
    labels = [r["label"] for r in nextline]
    assert all(labels.count(k) > 60 for k in range(4))  # the true line's position is spread out
    from efflm.datasets import text

    calib = text.split_text("calib")
    assert not any(r["context"][:200] in calib for r in cloze[:50])  # never calibration text


def test_loglikelihood_equals_lm_evals_hf_model_on_the_same_weights(tiny):
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    ours = EfflmLM(loaded=(model, tok), batch_size=3, max_length=64)
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=64, device="cpu")
    a = ours.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    b = hf.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(a, b):
        assert la == pytest.approx(lb, abs=1e-4) and ga == gb
    texts = [("It is a tale told by an idiot, full of sound and fury, signifying nothing. " * 6,)]
    ra = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", texts), disable_tqdm=True)
    rb = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts), disable_tqdm=True)
    assert ra[0] == pytest.approx(rb[0], abs=1e-3) and ra[0] < 0


def test_loglikelihood_is_the_sum_of_the_continuations_log_probabilities(tiny):
    model, tok = tiny
    ours = EfflmLM(loaded=(model, tok))
    ctx, cont = tok.encode("The king is"), tok.encode(" dead")
    ((lp, greedy),) = ours._loglikelihood_tokens([(None, ctx, cont)], disable_tqdm=True)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    want = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    assert lp == pytest.approx(want, abs=1e-5)
    assert greedy == all(int(logp[len(ctx) - 1 + k].argmax()) == t for k, t in enumerate(cont))


def test_generate_until_is_efflms_greedy_decode_cut_at_the_stop_strings(tiny):
    from efflm.inference.generate import SamplingConfig, generate

    model, tok = tiny
    ours = EfflmLM(loaded=(model, tok), batch_size=2)
    prompts = ["Once upon a time", "Hello", "The"]
    full, _ = generate(model, tok, prompts, SamplingConfig(max_new_tokens=12))
    got = ours.generate_until(_requests("generate_until", [(p, {"until": [], "max_gen_toks": 12}) for p in prompts]))
    assert got == [g.text for g in full]
    stop = full[0].text[3:6]
    cut = ours.generate_until(_requests("generate_until", [(prompts[0], {"until": [stop], "max_gen_toks": 12})]))
    assert cut == [full[0].text.split(stop)[0]] and stop not in cut[0]


def test_efflm_eval_tasks_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(["eval", "--model", "tiny-llama", "--tasks", "efflm_cloze,efflm_nextline,efflm_instruct",
                 "--limit", "4", "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "| efflm_nextline | acc_norm |" in text and "| 0.25 |" in text and "| efflm_instruct | exact_match |" in text
    scores = json.loads(out.read_text())["scores"]
    assert set(scores) == {"efflm_cloze", "efflm_nextline", "efflm_instruct"}
    assert 0 <= scores["efflm_nextline"]["acc"] <= 1 and scores["efflm_cloze"]["perplexity"] > 1


def test_a_task_file_of_ones_own_runs_like_a_named_task(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"q": f"Two plus {i} is", "a": f" {2 + i}"}) + "\n" for i in range(3)))
    task = tmp_path / "my_task.yaml"
    task.write_text(f"task: my_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {rows}\n"
                    "output_type: loglikelihood\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
                    "target_delimiter: ''\nmetric_list:\n  - metric: acc\n")  # fmt: skip
    assert main(["eval", "--model", "tiny-llama", "--tasks", f"{task},efflm_cloze", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "| my_sums | acc |" in out and "| efflm_cloze | acc |" in out


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--tasks", "efflm_clozee"], "unknown task 'efflm_clozee'; closest: efflm_cloze"),
        (["--tasks", "missing.yaml"], "task file not found: missing.yaml"),
        (["--tasks", "BAD"], "task file does not parse"),
        (["--tasks", "NONAME"], "task file does not parse: no `task:` name in it"),
        (["--tasks", ","], "--tasks: give at least one task name"),
        (["--limit", "3"], "--limit, --chat and --out go with --tasks"),
        (["--tasks", "efflm_cloze", "--limit", "0"], "argument --limit: expected a positive integer"),
    ],
)
def test_eval_tasks_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, pattern):
    out = tmp_path / "s.json"
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n  - x: : y\n")
    (tmp_path / "noname.yaml").write_text("output_type: loglikelihood\n")
    args = [{"BAD": str(tmp_path / "bad.yaml"), "NONAME": str(tmp_path / "noname.yaml")}.get(x, x) for x in args]
    assert main(["eval", "--model", "tiny-llama", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error: ") and pattern in err and err.count("\n") == 1
    assert not out.exists()


def test_efflm_lm_eval_is_lm_evals_command_with_the_efflm_model(tmp_path, capsys):
    out = tmp_path / "lm"
    code = main(["lm-eval", "--model", "efflm", "--model_args", "model=tiny-llama", "--tasks", "efflm_cloze",
                 "--limit", "3", "--batch_size", "2", "--output_path", str(out)])  # fmt: skip
    assert code == 0
    (result,) = out.rglob("results_*.json")
    data = json.loads(result.read_text())
    assert data["results"]["efflm_cloze"]["acc,none"] == 0.0 and data["config"]["model"] == "efflm"


def test_headline_prefers_normalized_accuracy():
    assert lm_eval_run.headline({"acc": 0.3, "acc_norm": 0.4, "acc_norm_stderr": 0.1}) == ("acc_norm", 0.4, 0.1)
    assert lm_eval_run.headline({"exact_match": 0.5}) == ("exact_match", 0.5, None)


def test_model_args_apply_the_recipe_and_the_adapter(tmp_path, tiny):
    """``model=...,recipe=...,adapter=...`` scores the compressed model with the adapter on it."""
    from efflm import pipeline
    from efflm.core import recipe as recipes
    from efflm.finetune.peft_files import save_adapter
    from tests.finetune.test_adapters import adapted, perturb

    m, _, cfg = adapted("lora")
    perturb(m)
    save_adapter(m, cfg, tmp_path / "a", {})
    rfile = tmp_path / "r.yaml"
    rfile.write_text("- method: rtn\n  group_size: 32\n")
    lm = EfflmLM(model="tiny-llama", recipe=str(rfile), adapter=str(tmp_path / "a"))
    from efflm.finetune.peft_files import load_adapter

    want, _ = pipeline.load_and_apply("tiny-llama", recipes.load(rfile))
    want, _ = load_adapter(want, tmp_path / "a")
    ids = torch.tensor([tiny[1].encode("Now is the winter of our discontent")])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, want.eval()(ids).logits)
        assert not torch.allclose(lm.model(ids).logits, tiny[0](ids).logits, atol=1e-3)
    assert type(lm.model.model.layers[0].mlp.up_proj).__name__ == "LoraLinear"


def test_bench_tasks_scores_each_row_and_the_leaderboard_shows_it(tmp_path, capsys):
    args = ["bench", "--model", "tiny-llama", "--methods", "dense,rtn", "--db", str(tmp_path / "db.sqlite"),
            "--out-dir", str(tmp_path), "--seq-len", "64", "--windows", "1", "--reps", "1", "--new-tokens", "4",
            "--tasks", "efflm_nextline", "--task-limit", "4"]  # fmt: skip
    assert main(args) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    assert "efflm_nextline acc_norm" in md and "the first 4 examples of each task" in md
    rows = [line for line in md.splitlines() if line.startswith(("| dense(", "| rtn("))]
    assert len(rows) == 2 and all(" ± " in r for r in rows)


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--tasks", "nope_task"], "unknown task 'nope_task'"),
        (["--task-limit", "4"], "--task-limit goes with --tasks"),
    ],
)
def test_bench_tasks_bad_input_before_any_work(tmp_path, capsys, args, pattern):
    db = tmp_path / "db.sqlite"
    assert main(["bench", "--model", "tiny-llama", "--methods", "dense", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error: ") and pattern in err and err.count("\n") == 1
    assert not db.exists()


def test_suite_tasks_scores_its_rows_on_the_suites_tasks(tmp_path, monkeypatch):
    from efflm.bench import leaderboard, runner, suites

    seen = {}
    monkeypatch.setattr(runner, "bench", lambda opts: seen.setdefault("opts", opts))
    monkeypatch.setattr(leaderboard, "write", lambda *a: ("", tmp_path / "l.md", tmp_path / "p.png"))
    assert main(["bench", "--model", "tiny-llama", "--suite", "tasks", "--task-limit", "3", "--db",
                 str(tmp_path / "db.sqlite")]) == 0  # fmt: skip
    opts = seen["opts"]
    assert opts.worker_args["tasks"] == suites.TASKS_SUITE_TASKS and opts.worker_args["task_limit"] == 3
    assert [r[0].method for r in opts.recipes] == ["dense", "rtn", "rtn", "rtn", "gptq", "wanda", "llm_pruner"]
