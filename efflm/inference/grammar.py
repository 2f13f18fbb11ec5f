"""Constrained decoding with llguidance: JSON schemas, regular expressions and Lark grammars
enforced token by token.

llguidance (MIT licence, no Python dependencies; one of the engines vLLM and SGLang offer, and
llama.cpp's optional one) compiles a grammar against the tokenizer's vocabulary and, at each
step, computes the set of tokens that keep the output inside it, lazily, from the grammar itself
(no per-schema automaton built up front). Its cost per mask is measured in
``results/serve_structured.md`` beside xgrammar's (Apache 2.0), the other maintained engine with
CPU wheels.

JSON is written without free whitespace (llguidance's ``whitespace_flexible: false``, unless the
schema's own ``x-guidance`` says otherwise). ``compile_grammar`` checks a grammar before any work (a 400 for the server); ``Constraint`` is one
sequence's matcher: ``mask`` sets disallowed logits to −inf in place, ``advance`` consumes the
chosen token, ``done`` says the grammar is complete (the end of sequence is then forced).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from efflm.core.errors import EfflmError

KINDS = ("json_schema", "json_object", "regex", "lark")


@lru_cache(maxsize=4)
def _tokenizer(tok: Any, vocab: int) -> Any:
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tok, n_vocab=vocab)


def compile_grammar(tok: Any, vocab: int, kind: str, spec: Any) -> str:
    """llguidance's grammar for ``kind`` ("json_schema": a schema dict, "json_object": any JSON
    object, "regex": a pattern, "lark": a grammar), validated against the vocabulary."""
    try:
        import llguidance
    except ImportError as e:  # a core dependency: only a broken install gets here
        raise EfflmError("structured output needs llguidance (pip install llguidance)") from e
    if kind == "json_object":
        spec, kind = {"type": "object"}, "json_schema"
    if kind == "json_schema" and isinstance(spec, dict):  # no free whitespace between tokens (a weak model
        spec = {"x-guidance": {"whitespace_flexible": False}, **spec}  # can fill max_tokens with it), as OpenAI's
    try:
        if kind == "json_schema":
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(spec))
        elif kind == "regex":
            grammar = llguidance.grammar_from("regex", spec)
        elif kind == "lark":
            grammar = llguidance.grammar_from("lark", spec)
        else:
            raise EfflmError(f"unknown grammar kind {kind!r} (one of {', '.join(KINDS)})")
    except (ValueError, TypeError, RuntimeError) as e:
        raise EfflmError(f"the {kind.replace('_', ' ')} does not compile: {str(e).splitlines()[0]}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar, _tokenizer(tok, vocab))
    if error:
        raise EfflmError(f"the {kind.replace('_', ' ')} does not compile: {error.splitlines()[0]}")
    return grammar


class Constraint:
    """One sequence's position in a compiled grammar."""

    def __init__(self, tok: Any, vocab: int, grammar: str):
        import llguidance
        import llguidance.torch as lt

        self._lt = lt
        self.matcher = llguidance.LLMatcher(_tokenizer(tok, vocab), grammar)
        self.bitmask = lt.allocate_token_bitmask(1, vocab)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [V]`` (float32, modified in place) with every token the grammar forbids at −inf.
        The bitmask is unpacked with numpy (bit j of word i is token 32·i + j): about 20× faster on
        this CPU than llguidance's scripted torch kernel for one row."""
        self._lt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), bitorder="little")[: logits.shape[-1]]
        logits.masked_fill_(torch.from_numpy(bits == 0), float("-inf"))
        return logits

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise EfflmError(f"the grammar rejected token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing but the end of the sequence."""
        return self.matcher.is_stopped()
