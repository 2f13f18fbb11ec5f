"""The OpenAI request bodies efflm serves, checked field by field into one ``Job``.

Every problem raises ``ApiError`` carrying the status and the OpenAI error shape
(``{"error": {"message", "type", "param", "code"}}``); nothing here touches the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from efflm.core.errors import EfflmError
from efflm.inference.generate import SamplingConfig
from efflm.inference.logits_process import Adjust
from efflm.serve import tools as tooling
from efflm.serve.errors import ApiError


@dataclass(frozen=True)
class Job:
    chat: bool
    prompt_ids: list[int]
    sampling: SamplingConfig
    stream: bool
    include_usage: bool
    model: str
    n: int = 1
    logprobs: int | None = None  # None: off; k: the chosen token's log-probability and k alternatives
    echo: bool = False
    adjust: Adjust = Adjust()
    grammar: str | None = None  # llguidance's compiled grammar (response_format, guided_*, a forced tool call)
    tools: tooling.Tools | None = None
    adapter: str | None = None  # the named LoRA adapter ``model`` chose (None: the base)


# Every request field efflm reads; any other is a 400 rather than silently ignored.
COMMON = {"model", "n", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed",
          "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user",
          "guided_json", "guided_regex", "guided_grammar"}  # fmt: skip
GRAMMAR_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_grammar", "tools")
CHAT = COMMON | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
COMPLETION = COMMON | {"prompt", "echo"}


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    bad = _unencodable(body, "")
    if bad is not None:  # JSON's \ud83d escapes decode to lone surrogates, which no tokenizer takes
        raise ApiError(400, f"{bad or 'the body'}: a string holds a lone UTF-16 surrogate (not valid Unicode text)",
                       param=bad.split(".")[0].split("[")[0] or None)  # fmt: skip
    return body


def _unencodable(value: Any, path: str) -> str | None:
    """The path (``messages[0].content``) of the first string in ``value`` that is not valid
    Unicode text (a lone surrogate), keys included; ``None`` if every string encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            bad = _unencodable(k, where) if isinstance(k, str) else None
            bad = bad if bad is not None else _unencodable(v, where)
            if bad is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _unencodable(v, f"{path}[{i}]")
            if bad is not None:
                return bad
    return None


def only(body: dict, fields: set[str]) -> None:
    """A 400 naming the first field of ``body`` the endpoint does not serve (never ignored)."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError(
            400, f"'{unknown[0]}' is not served by this endpoint", param=unknown[0], code="unsupported_field"
        )


def chosen_model(body: dict, served: str, adapters: Any = ()) -> tuple[str, str | None]:
    """(the ``model`` asked for, the LoRA adapter it names or None for the base), or a 400."""
    model = _get(body, "model", (str,), served, "a string")
    if model != served and model not in adapters:
        known = ", ".join(f"'{m}'" for m in [served, *adapters])
        raise ApiError(
            400, f"the model '{model}' does not exist; this server serves {known}", "model", "model_not_found"
        )
    return model, None if model == served else model


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any, label: str) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {label}, got {json.dumps(value)[:60]}", param=name)
    return value


def _num(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = float(_get(body, name, (int, float), default, "a number"))
    if v < lo or v > hi or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ApiError(400, f"'{name}' must be in {bound}, got {v}", param=name)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them", param="stop")
    return tuple(stops)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise ApiError(400, f"messages[{i}] needs a role: system, user, assistant, developer or tool",
                           param="messages")  # fmt: skip
        content = m.get("content")
        calls = m.get("tool_calls") if m["role"] == "assistant" else None
        if calls is not None:
            if not isinstance(calls, list) or not all(_is_call(c) for c in calls):
                raise ApiError(400, f"messages[{i}].tool_calls must be OpenAI tool calls (function name and "
                                    "arguments as a JSON string)", param="messages")  # fmt: skip
            if content is None:
                content = ""
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise ApiError(400, f"messages[{i}].content: only text parts are served", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        msg = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
        if calls:
            msg["tool_calls"] = [
                {"id": c.get("id", ""), "type": "function", "function": dict(c["function"])} for c in calls
            ]
        if m["role"] == "tool":
            msg["tool_call_id"] = str(m.get("tool_call_id", ""))
        out.append(msg)
    return out


def _is_call(c: Any) -> bool:
    fn = c.get("function") if isinstance(c, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)


def job(
    body: dict,
    chat: bool,
    tok: Any,
    served: str,
    max_len: int,
    compress: Any = None,
    max_n: int = 8,
    vocab: int = 0,
    adapters: Any = (),
) -> Job:
    """The request as efflm runs it, or ApiError (400/404). ``compress(text) -> text`` (``efflm
    serve --compress-prompt``) shortens the prompt, or the last user message, first; ``vocab``:
    the model's vocabulary (logit_bias ids and grammars are checked against it); ``adapters``: the
    names of the LoRA adapters loaded, which ``model`` may name instead of the base."""
    vocab = vocab or len(tok)
    model, adapter = chosen_model(body, served, adapters)
    only(body, CHAT if chat else COMPLETION)
    n = _get(body, "n", (int,), 1, "an integer")
    if not 1 <= n <= max_n:
        raise ApiError(400, f"'n' must be in [1, {max_n}] (the server's --max-n), got {n}", param="n")
    stream = _get(body, "stream", (bool,), False, "a boolean")
    opts = _get(body, "stream_options", (dict,), {}, "an object")
    include_usage = bool(_get(opts, "include_usage", (bool,), False, "a boolean"))
    name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _get(body, name, (int,), 16 if not chat else None, "an integer")
    if chat:
        msgs = _messages(body)
        if compress is not None:
            last = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
            if last is not None and isinstance(msgs[last]["content"], str):
                msgs = [*msgs[:last], {**msgs[last], "content": compress(msgs[last]["content"])}, *msgs[last + 1 :]]
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, "this model's tokenizer has no chat template: use /v1/completions", param="messages")
        tools = tooling.parse(body)
        msgs, tools_arg = tooling.messages(msgs, tools, tok.chat_template)
        extra = {"tools": tools_arg} if tools_arg else {}
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False, **extra)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string (one prompt per request)", param="prompt")
        if compress is not None:
            prompt = compress(prompt)
        ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
        tools = None
    if not ids:
        raise ApiError(400, "the prompt encodes to zero tokens", param="messages" if chat else "prompt")
    if max_tokens is None:
        max_tokens = max(1, max_len - len(ids))
    if max_tokens < 1:
        raise ApiError(400, f"'{name}' must be at least 1, got {max_tokens}", param=name)
    if len(ids) + max_tokens > max_len:
        raise ApiError(
            400,
            f"the prompt ({len(ids)} tokens) plus {name} ({max_tokens}) exceed the context this server holds "
            f"({max_len} tokens)",
            param=name,
            code="context_length_exceeded",
        )
    seed = _get(body, "seed", (int,), None, "an integer")
    try:
        sampling = SamplingConfig(
            max_new_tokens=max_tokens,
            temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
            top_k=int(_get(body, "top_k", (int,), 0, "an integer")),
            stop=_stop(body),
            seed=None if seed is None else seed % 2**63,
        )
    except EfflmError as e:
        raise ApiError(400, str(e)) from None
    echo = bool(_get(body, "echo", (bool,), False, "a boolean"))
    grammar = _grammar(body, tok, vocab)
    if tools is not None and tools.forced:  # "required" or a named function: exactly one call
        if grammar is not None:
            raise ApiError(400, "a forced tool call and an output constraint cannot both apply", param="tool_choice")
        grammar = _compile(tok, vocab, "json_schema", tooling.call_schema(tools.forced), "tool_choice")
    return Job(chat, ids, sampling, stream, include_usage, model, n, _logprobs(body, chat), echo,
               _adjust(body, vocab), grammar, tools if tools is not None and tools.choice != "none" else None,
               adapter)  # fmt: skip


def _logprobs(body: dict, chat: bool) -> int | None:
    """Chat: ``logprobs`` true and ``top_logprobs`` 0..20; completions: ``logprobs`` 0..5."""
    if chat:
        on = _get(body, "logprobs", (bool,), False, "a boolean")
        top = _get(body, "top_logprobs", (int,), None, "an integer")
        if top is not None and not on:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        if top is not None and not 0 <= top <= 20:
            raise ApiError(400, f"'top_logprobs' must be in [0, 20], got {top}", param="top_logprobs")
        return (top or 0) if on else None
    k = _get(body, "logprobs", (int,), None, "an integer")
    if k is not None and not 0 <= k <= 5:
        raise ApiError(400, f"'logprobs' must be in [0, 5], got {k}", param="logprobs")
    return k


def _adjust(body: dict, vocab: int) -> Adjust:
    bias = _get(body, "logit_bias", (dict,), {}, "an object mapping token ids to biases")
    pairs = []
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < vocab):
            raise ApiError(400, f"'logit_bias' keys must be token ids below {vocab}, got {key!r}", param="logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ApiError(
                400, f"'logit_bias' values must be numbers in [-100, 100], got {value!r}", param="logit_bias"
            )
        pairs.append((int(key), float(value)))
    return Adjust(_num(body, "presence_penalty", 0.0, -2.0, 2.0), _num(body, "frequency_penalty", 0.0, -2.0, 2.0),
                  tuple(pairs))  # fmt: skip


def _grammar(body: dict, tok: Any, vocab: int) -> str | None:
    """The compiled grammar of ``response_format`` or vLLM's ``guided_json/regex/grammar`` (one of them)."""
    asked = []
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise ApiError(400, "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                           param="response_format")  # fmt: skip
        if fmt["type"] == "json_object":
            asked.append(("response_format", "json_object", None))
        elif fmt["type"] == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ApiError(400, "'response_format.json_schema' needs a 'schema' object", param="response_format")
            asked.append(("response_format", "json_schema", spec["schema"]))
    for field, kind, types in (("guided_json", "json_schema", (dict,)), ("guided_regex", "regex", (str,)),
                               ("guided_grammar", "lark", (str,))):  # fmt: skip
        if body.get(field) is not None:
            asked.append((field, kind, _get(body, field, types, None, "an object" if dict in types else "a string")))
    if not asked:
        return None
    if len(asked) > 1:
        raise ApiError(
            400, f"one output constraint per request, got {asked[0][0]} and {asked[1][0]}", param=asked[1][0]
        )
    field, kind, spec = asked[0]
    return _compile(tok, vocab, kind, spec, field)


def _compile(tok: Any, vocab: int, kind: str, spec: Any, field: str) -> str:
    from efflm.inference.grammar import compile_grammar

    try:
        return compile_grammar(tok, vocab, kind, spec)
    except EfflmError as e:
        raise ApiError(400, str(e), param=field) from None
