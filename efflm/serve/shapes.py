"""OpenAI's response objects for one request: whole answers, stream chunks, usage, log-probabilities.

Log-probabilities arrive from the batcher as (token, logprob, [(alternative, logprob)]); chat
reports them as ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``, completions
as ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (OpenAI's legacy shape, which
the ``openai`` client and lm-eval read).
"""

from __future__ import annotations

from typing import Any


class Shape:
    def __init__(self, chat: bool, rid: str, model: str, created: int, tok: Any, top: int | None):
        self.chat, self.rid, self.model, self.created, self.tok, self.top = chat, rid, model, created, tok, top
        self.kind = "chat.completion" if chat else "text_completion"
        self.offset: dict[int, int] = {}  # per choice: characters of text already reported (text_offset)

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def usage(gens: list) -> dict:
        prompt = gens[0].prompt_tokens if gens else 0
        n = sum(len(g.tokens) for g in gens)
        return {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}

    @staticmethod
    def reason(gen: Any) -> str:
        return "length" if gen.finish == "length" else "stop"

    def _head(self, kind: str) -> dict:
        return {"id": self.rid, "object": kind, "created": self.created, "model": self.model}

    def _text(self, token: int) -> str:
        return self.tok.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def logprobs(self, entries: list, index: int = 0) -> dict | None:
        """The ``logprobs`` object of a choice (or chunk) for these tokens; None when not asked for."""
        if self.top is None:
            return None
        if self.chat:
            content = []
            for token, lp, alts in entries:
                text = self._text(token)
                top = [{"token": self._text(a), "logprob": v, "bytes": list(self._text(a).encode())} for a, v in alts]
                content.append({"token": text, "logprob": lp, "bytes": list(text.encode()), "top_logprobs": top})
            return {"content": content}
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        at = self.offset.get(index, 0)
        for token, lp, alts in entries:
            text = self._text(token)
            out["tokens"].append(text)
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append({self._text(a): v for a, v in alts} if self.top and lp is not None else None)
            out["text_offset"].append(at)
            at += len(text)
        self.offset[index] = at
        return out

    # -- whole answers and chunks ----------------------------------------------------------------
    def whole(self, texts: list, gens: list, entries: list[list], calls: list[list] | None = None) -> dict:
        """``calls``: each choice's tool calls (its text then the content outside them, or None)."""
        choices = []
        for i, (text, gen, lps) in enumerate(zip(texts, gens, entries)):
            if self.chat:
                choice = {"index": i, "message": {"role": "assistant", "content": text}}
                if calls and calls[i]:
                    choice["message"]["tool_calls"] = calls[i]
            else:
                choice = {"index": i, "text": text}
            choice["logprobs"] = self.logprobs(lps, i)
            choice["finish_reason"] = "tool_calls" if calls and calls[i] else self.reason(gen)
            choices.append(choice)
        return {**self._head(self.kind), "choices": choices, "usage": self.usage(gens)}

    def chunk(self, index: int, delta: str | None, entries: list, gen: Any = None, role: bool = False) -> dict:
        finish = None if gen is None else self.reason(gen)
        lps = self.logprobs(entries, index) if entries else None
        if self.chat:
            d = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": index, "delta": d, "logprobs": lps, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": delta or "", "logprobs": lps, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def tool_chunks(self, index: int, content: str | None, calls: list, gen: Any) -> list[dict]:
        """A buffered choice's end in a stream: its content, each call (id, name and all its
        arguments in one delta), then the finish reason."""
        out = [self.chunk(index, content, [])] if content else []
        for k, c in enumerate(calls):
            delta = {"tool_calls": [{"index": k, **c}]}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            out.append({**self._head("chat.completion.chunk"), "choices": [choice]})
        last = self.chunk(index, None, [], gen=gen)
        last["choices"][0]["finish_reason"] = "tool_calls" if calls else self.reason(gen)
        return [*out, last]

    def usage_chunk(self, gens: list) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": self.usage(gens)}

    def echo(self, prompt_ids: list[int], prompt_lps: list | None) -> tuple[str, list]:
        """The prompt's text and (with logprobs) its entries, the first token's logprob None."""
        text = self.tok.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if self.top is None:
            return text, []
        return text, [(prompt_ids[0], None, []), *(prompt_lps or [])]
