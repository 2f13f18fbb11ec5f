"""Tool calls in chat completions: ``tools`` and ``tool_choice`` in, OpenAI's ``tool_calls`` out.

The tools reach the model through its chat template (``apply_chat_template(..., tools=)``, as
transformers and vLLM render them); a template that does not mention tools gets them in a system
message in the Hermes format most open models were tuned on — the tool list as JSON inside
``<tools></tools>``, a call written ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
Earlier assistant calls and ``tool`` results in the conversation are rendered the same way.

``tool_choice``: "none" renders no tools; "auto" lets the model choose and parses ``<tool_call>``
blocks out of its text; "required" and a named function are enforced with the grammar engine —
the output is exactly one call, a JSON object whose ``name`` is one of the allowed tools and whose
``arguments`` follow that tool's ``parameters`` schema.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from efflm.serve.errors import ApiError

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


@dataclass(frozen=True)
class Tools:
    tools: tuple[dict, ...]  # {"name", "description", "parameters"}
    choice: str  # "none", "auto", "required", or "function:NAME"

    @property
    def forced(self) -> list[dict]:
        """The tools a call must be one of (required / named), else []."""
        if self.choice == "required":
            return list(self.tools)
        if self.choice.startswith("function:"):
            return [t for t in self.tools if t["name"] == self.choice[9:]]
        return []


def parse(body: dict) -> Tools | None:
    """``tools`` and ``tool_choice`` checked (None: no tools in the request)."""
    raw, choice = body.get("tools"), body.get("tool_choice")
    if raw is None:
        if choice not in (None, "none"):
            raise ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'tools' must be a non-empty list of functions", param="tools")
    tools = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not _NAME.match(fn["name"]):
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": [a-zA-Z0-9_-]{{1,64}}, ...}}}}",
                           param="tools")  # fmt: skip
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        tools.append({"name": fn["name"], "description": str(fn.get("description") or ""), "parameters": params})
    if len({t["name"] for t in tools}) != len(tools):
        raise ApiError(400, "tool names must be unique", param="tools")
    choice = "auto" if choice is None else choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name not in {t["name"] for t in tools}:
            raise ApiError(400, f"'tool_choice' names no tool of this request: {json.dumps(choice)[:80]}",
                           param="tool_choice")  # fmt: skip
        choice = f"function:{name}"
    elif choice not in ("none", "auto", "required"):
        raise ApiError(400, "'tool_choice' must be none, auto, required or {\"type\": \"function\", ...}",
                       param="tool_choice")  # fmt: skip
    return Tools(tuple(tools), choice)


def call_schema(tools: list[dict]) -> dict:
    """The JSON schema of one call to one of ``tools``."""
    one = [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False} for t in tools]  # fmt: skip
    return one[0] if len(one) == 1 else {"anyOf": one}


def _openai(t: dict) -> dict:
    return {"type": "function", "function": t}


def system_text(tools: Tools) -> str:
    """The Hermes-format tool prompt for templates that do not render tools themselves."""
    listing = "\n".join(json.dumps(_openai(t)) for t in tools.tools)
    return ("You may call one or more functions to assist with the user query. The functions are listed "
            f"within <tools></tools>:\n<tools>\n{listing}\n</tools>\nTo call a function, reply with a JSON "
            'object inside <tool_call></tool_call>: <tool_call>{"name": <function-name>, "arguments": '
            "<args-json-object>}</tool_call>")  # fmt: skip


def messages(msgs: list[dict], tools: Tools | None, template: str) -> tuple[list[dict], list[dict] | None]:
    """The conversation as the chat template takes it, and the ``tools`` argument for it (None when
    the template does not render tools: they are in a system message instead)."""
    if tools is None or tools.choice == "none":
        return [_plain(m) for m in msgs], None
    if "tools" in template:
        return msgs, [_openai(t) for t in tools.tools]
    out = [_plain(m) for m in msgs]
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + system_text(tools)}
    else:
        out.insert(0, {"role": "system", "content": system_text(tools)})
    return out, None


def _plain(m: dict) -> dict:
    """A message with its tool calls written as Hermes text (for templates without tool support)."""
    calls = m.get("tool_calls") or []
    text = m.get("content") or ""
    for c in calls:
        fn = c["function"]
        text += f'<tool_call>{{"name": {json.dumps(fn["name"])}, "arguments": {fn["arguments"]}}}</tool_call>'
    role = m["role"]
    if role == "tool":
        text = f"<tool_response>\n{text}\n</tool_response>"
    return {"role": role, "content": text}


def parse_output(text: str, tools: Tools) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of the model's text: the whole text is one JSON call when the call was
    forced; ``<tool_call>`` blocks naming a tool of the request otherwise."""
    names = {t["name"] for t in tools.tools}
    found = []
    if tools.forced:
        try:
            found = [json.loads(text)]
        except ValueError:  # cut by max_tokens: no complete call
            return text, []
        rest = ""
    else:
        for block in _CALL.findall(text):
            try:
                found.append(json.loads(block))
            except ValueError:
                continue
        rest = _CALL.sub("", text).strip()
    calls = [
        {"id": "call_" + secrets.token_hex(12), "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
        for c in found if isinstance(c, dict) and c.get("name") in names
    ]  # fmt: skip
    if not calls:
        return text, []
    return rest or None, calls
