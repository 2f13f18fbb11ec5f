"""Tool calls through the official client: forced calls follow the tool's schema, a call → result →
answer round trip, streaming deltas, Hermes-format parsing and rendering, bad choices are 400s."""

import json

import httpx
import jsonschema
import pytest

from efflm.serve import tools as tooling
from efflm.serve.errors import ApiError
from tests.serve.conftest import Running

MODEL = "tiny-llama"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
    "required": ["zone"], "additionalProperties": False}}}  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    """tiny-llama's byte-level tokenizer makes a tool prompt ~900 tokens: a longer context than the shared server's."""
    s = Running(max_batch=4, max_queue=16, max_len=2048)
    yield s
    s.stop()


def _params(name):
    return {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}[name]


def test_a_named_tool_choice_gives_one_valid_call(server):
    c = server.client()
    for seed in range(3):
        r = c.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], temperature=1.0, seed=seed,
                                      max_tokens=80, tool_choice={"type": "function", "function": {"name": "get_weather"}})  # fmt: skip
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), _params("get_weather"))


def test_required_picks_one_of_the_tools_and_streams_the_same_call(server):
    c = server.client()
    kw = dict(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", temperature=0, max_tokens=80)
    r = c.chat.completions.create(**kw)
    (call,) = r.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), _params(call.function.name))
    chunks = list(c.chat.completions.create(**kw, stream=True))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == [call.function.name]
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


def test_a_call_result_answer_round_trip(server):
    c = server.client()
    first = c.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                      temperature=0, max_tokens=80)  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21, "sky": "clear"})}]  # fmt: skip
    answer = c.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=12)  # fmt: skip
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content
    prompt = server.tok.decode(tooling_prompt(server, history))
    assert "<tool_response>" in prompt and '"temp": 21' in prompt and "get_weather" in prompt


def tooling_prompt(server, history):
    from efflm.serve.protocol import job

    body = {"model": MODEL, "messages": history, "tools": [WEATHER], "tool_choice": "auto", "max_tokens": 2}
    return job(body, True, server.tok, MODEL, 2048).prompt_ids


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_400s(server, extra, param):
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "max_tokens": 4, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": ASK, "tool_choice": "auto"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


def test_auto_output_is_parsed_from_hermes_blocks():
    tools = tooling.parse({"tools": [WEATHER, CLOCK]})
    text = 'Let me check. <tool_call>{"name": "get_time", "arguments": {"zone": 2}}</tool_call>'
    content, calls = tooling.parse_output(text, tools)
    assert content == "Let me check." and [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"zone": 2}
    assert tooling.parse_output('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', tools)[1] == []
    assert tooling.parse_output("no call here", tools) == ("no call here", [])


def test_templates_without_tools_get_them_in_a_system_message():
    tools = tooling.parse({"tools": [WEATHER], "tool_choice": "auto"})
    msgs, arg = tooling.messages([{"role": "system", "content": "Be brief."}, *ASK], tools, "{{ messages }}")
    assert arg is None and msgs[0]["content"].startswith("Be brief.") and '"get_weather"' in msgs[0]["content"]
    msgs, arg = tooling.messages(ASK, tools, "{% if tools %}{{ tools }}{% endif %}")
    assert msgs == ASK and arg[0]["function"]["name"] == "get_weather"
    with pytest.raises(ApiError, match="names no tool"):
        tooling.parse({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}})
