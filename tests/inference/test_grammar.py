import json
import re

import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.inference.grammar import Constraint, compile_grammar
from efflm.models.tiny import tiny_tokenizer

pytest.importorskip("llguidance")


def walk(tok, grammar, pick):
    """Decode under ``grammar`` choosing ``pick(allowed ids)`` until it is done (or 64 tokens)."""
    c = Constraint(tok, len(tok), grammar)
    out = []
    for _ in range(64):
        logits = c.mask(torch.zeros(len(tok)))
        allowed = (logits > float("-inf")).nonzero().flatten().tolist()
        t = pick(allowed)
        if t == tok.eos_token_id:
            break
        c.advance(t)
        out.append(t)
        if c.done:
            break
    return tok.decode(out)


def test_a_regex_grammar_admits_only_matching_text():
    tok = tiny_tokenizer()
    g = compile_grammar(tok, len(tok), "regex", r"[0-9]{3}-[a-c]{2}")
    for seed in range(5):
        rng = torch.Generator().manual_seed(seed)
        text = walk(tok, g, lambda ids: ids[int(torch.randint(len(ids), (1,), generator=rng))])
        assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", text), text


def test_json_schema_text_is_compact_and_valid():
    tok = tiny_tokenizer()
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"],
              "additionalProperties": False}  # fmt: skip
    g = compile_grammar(tok, len(tok), "json_schema", schema)
    text = walk(tok, g, lambda ids: ids[0])
    assert json.loads(text)["a"] <= 9 and " " not in text


def test_grammars_that_do_not_compile_are_refused_in_one_line():
    tok = tiny_tokenizer()
    for kind, spec in (("json_schema", {"type": "nonsense"}), ("regex", "[a-"), ("lark", "start: ( ")):
        with pytest.raises(EfflmError, match="does not compile") as e:
            compile_grammar(tok, len(tok), kind, spec)
        assert "\n" not in str(e.value)
