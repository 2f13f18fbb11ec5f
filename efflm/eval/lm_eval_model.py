"""efflm's models inside lm-evaluation-harness: ``EfflmLM``, registered in lm-eval's model
registry as ``efflm`` (``--model efflm --model_args model=SPEC,recipe=FILE,adapter=DIR``).

Any efflm model — a compressed recipe applied on load, a KV-cache method, an adapter applied
unmerged — is scored by its own forward (``loglikelihood``, ``loglikelihood_rolling``) and
decoded by efflm's decode path (``generate_until``: static KV cache, the recipe's KV method,
batched). Tokenization follows lm-eval's ``hf`` model exactly (its ``TemplateLM`` splits a
context/continuation pair; the same left truncation to ``max_length``), so on the same weights
both give the same per-sample log-likelihoods (``tests/eval/test_lm_eval.py`` checks).
"""

from __future__ import annotations

from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models first: a non-empty registry is never filled later)
import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from efflm.core.device import of as device_of
from efflm.core.errors import EfflmError
from efflm.core.progress import progress

DEFAULT_MAX_LENGTH = 2048


@register_model("efflm")
class EfflmLM(TemplateLM):
    def __init__(
        self,
        model: str = "smollm2-135m",
        recipe: str | None = None,
        adapter: str | None = None,
        batch_size: int | str | None = 8,
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        loaded: tuple[Any, Any] | None = None,
        **_: Any,  # lm-eval passes device / max_batch_size; efflm runs where its model is
    ) -> None:
        super().__init__()
        if loaded is None:
            from efflm import pipeline
            from efflm.core import recipe as recipes

            loaded = pipeline.load_and_apply(model, recipes.load(recipe) if recipe else [])
            if adapter:
                from efflm.finetune.peft_files import load_adapter

                loaded = (load_adapter(loaded[0], adapter)[0], loaded[1])
        self.model, self.tokenizer = loaded
        self.model.eval()
        try:
            self._batch = max(1, int(batch_size or 1))
        except ValueError:
            raise EfflmError(f"lm-eval batch size must be a positive integer, got {batch_size!r}") from None
        ctx = getattr(self.model.config, "max_position_embeddings", None)
        self._max_length = int(max_length) if max_length else min(ctx or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        self._max_gen = int(max_gen_toks)
        self.spec = {"model": model, "recipe": recipe, "adapter": adapter}

    # --- what TemplateLM asks of a model --------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """An empty context's one token: BOS where the tokenizer has one (as lm-eval's hf)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "efflm")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: Any) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            kw["add_special_tokens"] = False  # the text already starts with BOS (as lm-eval's hf)
        return self.tokenizer.encode(string, **kw)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # --- scoring ------------------------------------------------------------------------
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_: Any) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), continuation is the greedy one)`` per request;
        longest first in batches of right-padded rows (causal: padding never reaches a row)."""
        rows = []
        for _key, context, continuation in requests:
            whole = (context + continuation)[-(self.max_length + 1) :]
            rows.append((whole[:-1], continuation))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        batches = [order[i : i + self._batch] for i in range(0, len(order), self._batch)]
        for batch in progress(batches, desc="lm-eval loglikelihood", disable=disable_tqdm):
            width = len(rows[batch[0]][0])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for j, i in enumerate(batch):
                inp = rows[i][0]
                ids[j, : len(inp)], mask[j, : len(inp)] = torch.tensor(inp), 1
            where = device_of(self.model)  # the rows go where the model is; the scores come back
            logits = self.model(input_ids=ids.to(where), attention_mask=mask.to(where)).logits
            for j, i in enumerate(batch):
                inp, cont = rows[i]
                n = len(cont)
                lp = torch.log_softmax(logits[j, len(inp) - n : len(inp)].float(), dim=-1).cpu()
                target = torch.tensor(cont)
                greedy = bool((lp.argmax(-1) == target).all())
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), greedy)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each whole text scored in disjoint windows of ``max_length`` (lm-eval's rolling
        windows, the end-of-text token as the first window's context)."""
        windows, owner = [], []
        for k, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(k)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, scores):
            totals[k] += lp
        return totals

    # --- generation ---------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, as the task asks) decoding on efflm's decode path, cut at the
        task's ``until`` strings; prompts left-truncated to leave room for the new tokens."""
        from efflm.inference.generate import SamplingConfig, generate_ids

        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # requests with the same generation settings batch together
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        bar = progress(None, "lm-eval generate", total=len(requests), disable=disable_tqdm)
        for idx in groups.values():
            kwargs = dict(requests[idx[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kwargs.pop("max_gen_toks", self._max_gen))
            sample = kwargs.pop("do_sample", False)
            temperature = float(kwargs.pop("temperature", 1.0 if sample else 0.0)) if sample else 0.0
            cfg = SamplingConfig(max_new_tokens=new, temperature=temperature, stop=tuple(s for s in until if s),
                                 seed=int(kwargs.pop("seed", 1234)))  # fmt: skip
            enc = [self.tok_encode(requests[i].args[0])[-(self.max_length - new) :] for i in idx]
            order = sorted(range(len(idx)), key=lambda j: -len(enc[j]))
            for s in range(0, len(order), self._batch):
                part = order[s : s + self._batch]
                width = max(len(enc[j]) for j in part)
                ids = torch.full((len(part), width), self.eot_token_id, dtype=torch.long)
                valid = torch.zeros(len(part), width, dtype=torch.bool)
                for r, j in enumerate(part):
                    ids[r, width - len(enc[j]) :], valid[r, width - len(enc[j]) :] = torch.tensor(enc[j]), True
                gens, _ = generate_ids(self.model, self.tokenizer, ids, valid, cfg, max_len=self.max_length)
                for r, j in enumerate(part):
                    text = gens[r].text
                    for stop in until:  # the end-of-text token among them is already a stop
                        text = text.split(stop)[0] if stop else text
                    out[idx[j]] = text
                bar.update(len(part))
        bar.close()
        return out
