"""Prompt compression: every compressor keeps within its budget and never drops the question or
the instruction; Selective Context drops the least informative units; LLMLingua's coarse stage
keeps the best-ranked chunks in order; `efflm data compress-prompt` and `generate
--compress-prompt` from the command line."""

import json

import pytest

from efflm.cli import main
from efflm.data_methods import llmlingua, selective_context, truncate_prompt
from efflm.data_methods.context import DataContext
from efflm.data_methods.prompt_parts import (
    PromptParts,
    budgets,
    n_tokens,
    split_question,
    token_units,
    unit_spans,
    windowed_self_information,
)
from efflm.datasets.text import paragraphs

CONFIGS = {
    "selective_context": lambda r: selective_context.SelectiveContextConfig(ratio=r),
    "selective_context_word": lambda r: selective_context.SelectiveContextConfig(ratio=r, unit="word"),
    "llmlingua": lambda r: llmlingua.LLMLinguaConfig(ratio=r, segment=40),
    "truncate": lambda r: truncate_prompt.TruncateConfig(ratio=r),
    "truncate_end": lambda r: truncate_prompt.TruncateConfig(ratio=r, keep="end"),
}
MODULES = {"selective_context": selective_context, "llmlingua": llmlingua, "truncate": truncate_prompt}


@pytest.fixture(scope="module")
def prompt():
    ctx = "\n\n".join(p[:240] for p in paragraphs("eval")[:4])
    return PromptParts("Answer from the text.", ctx, "Who speaks first?")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("ratio", [1.5, 2.0, 4.0, 8.0])
def test_compressors_keep_their_budget_and_the_question(tiny, prompt, name, ratio):
    model, tok = tiny
    cfg = CONFIGS[name](ratio)
    out = MODULES[cfg.method].apply([prompt], cfg, DataContext(model, tok))[0]
    target, _ = budgets(tok, prompt, ratio)
    assert n_tokens(tok, out) <= target
    assert out.startswith(prompt.instruction + "\n\n") and out.endswith("\n\n" + prompt.question)
    if name != "selective_context":  # sentence units may each be larger than what is left
        assert n_tokens(tok, out) >= 0.5 * target  # and uses most of what it may keep


def test_ratio_one_keeps_the_prompt(tiny, prompt):
    model, tok = tiny
    for name in ("selective_context", "truncate"):
        cfg = CONFIGS[name](1.0)
        assert MODULES[cfg.method].apply([prompt], cfg, DataContext(model, tok))[0] == prompt.join()


def test_selective_context_drops_the_least_informative_units(tiny):
    model, tok = tiny
    parts = PromptParts(context="aaaa aaaa aaaa zqxj kvwp aaaa aaaa qzjx")
    ids, owner, spans = token_units(tok, parts.context, "word")
    info = windowed_self_information(model, tok, ids)
    unit_info = [sum(x for u, x in zip(owner, info) if u == k) for k in range(len(spans))]
    cfg = selective_context.SelectiveContextConfig(ratio=2.0, unit="word")
    out = selective_context.apply([parts], cfg, DataContext(model, tok))[0]
    words = parts.context.split()
    kept = [i for i, w in enumerate(words) if w in out.split()]
    dropped = [i for i in range(len(words)) if i not in kept]
    assert dropped and kept and max(unit_info[i] for i in dropped) <= min(unit_info[i] for i in kept) + 1e-6


def test_units_tile_the_text():
    text = "First sentence here. Second one!  Third?\nA line\n\nLast words"
    for unit in ("word", "sentence"):
        spans = unit_spans(text, unit)
        assert "".join(text[a:b] for a, b in spans) == text
    assert len(unit_spans(text, "sentence")) == 5  # three sentences, "A line", "Last words"


def test_llmlingua_coarse_stage_keeps_best_chunks_in_order(tiny):
    _, tok = tiny
    pieces = ["alpha " * 5, "beta " * 5, "gamma " * 5, "delta " * 5]
    kept = llmlingua.coarse_select(tok, pieces, [0.1, 0.9, 0.2, 0.8], budget=2 * n_tokens(tok, pieces[0]))
    assert kept == [1, 3]
    assert llmlingua.coarse_select(tok, pieces, [0.1, 0.9, 0.2, 0.8], budget=1) == [1]  # at least one


def test_split_question():
    assert split_question("a\nb\nWhat?") == PromptParts(context="a\nb", question="What?")
    assert split_question("one line") == PromptParts(context="one line")


def test_compress_prompt_command_keeps_fields_and_reports(tmp_path):
    rows = [{"id": 1, "instruction": "Answer.", "context": paragraphs("eval")[0][:300], "question": "Who?"},
            {"id": 2, "text": paragraphs("eval")[1][:200]}]  # fmt: skip
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    assert main(["data", "compress-prompt", str(src), "--out", str(out), "--method", "truncate", "--ratio", "2",
                 "--model", "tiny-llama"]) == 0  # fmt: skip
    back = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "compressed_prompt"} for r in back] == rows
    assert back[0]["compressed_prompt"].endswith("\n\nWho?")
    report = json.loads((tmp_path / "c.jsonl.report.json").read_text())
    assert report["over_budget"] == [] and report["ratio_achieved"] >= 1.9


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"context": "x y z"}], ["--ratio", "0.5"], "must be ≥ 1"),
        ([{"body": "x"}], [], "p.jsonl:1: missing text field"),
        ([{"context": 3}], [], "field 'context' is not a string"),
        ([{"context": "x", "question": ["q"]}], [], "field 'question' is not a string"),
        ([{"context": "x y z"}], ["--model", "no/such-model"], "no/such-model"),
    ],
)
def test_compress_prompt_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, rows, extra, message):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["data", "compress-prompt", str(src), "--out", str(tmp_path / "c.jsonl"), "--model", "tiny-llama"]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error:") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_generate_compresses_the_prompt_first(capsys):
    prompt = "line one of the context here\nline two of the context here\nWhat is it?"
    assert main(["generate", "--model", "tiny-llama", "--compress-prompt", "2", "--compressor", "selective_context",
                 "--max-new-tokens", "2", prompt]) == 0  # fmt: skip
    assert "selective_context(ratio=2.0,unit=sentence): prompt" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-llama", "--compress-prompt", "0.5", "x"]) == 2
    assert main(["serve", "--model", "tiny-llama", "--compress-prompt", "0.9"]) == 2
    assert "a compression ratio must be ≥ 1" in capsys.readouterr().err
