"""The lm-eval cross-check on the default model: efflm's model and lm-eval's own ``hf`` model,
pointed at efflm's converted transformers directory, give the same per-sample log-likelihoods
(within 2e-3 nats: float32 sums over up to ~300 tokens, batched differently) and the same
accuracies on efflm's offline tasks."""

import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402

from efflm.eval.lm_eval_model import EfflmLM  # noqa: E402
from efflm.eval.lm_eval_run import _manager  # noqa: E402
from efflm.models.sources import _converted_gguf, smollm2_gguf  # noqa: E402

pytestmark = pytest.mark.integration
TASKS, LIMIT, TOL = ["efflm_cloze", "efflm_nextline"], 24, 2e-3


def _samples(model, args):
    out = lm_eval.simple_evaluate(model=model, model_args=args, tasks=TASKS, task_manager=_manager(False),
                                  limit=LIMIT, log_samples=True, bootstrap_iters=0, device="cpu")  # fmt: skip
    return out


def test_efflm_and_lm_evals_hf_model_agree_sample_by_sample(smol):
    model, tok, _ = smol
    ours = _samples(EfflmLM(loaded=(model, tok), batch_size=8, max_length=2048), None)
    hf = _samples("hf", f"pretrained={_converted_gguf(smollm2_gguf())},dtype=float32,batch_size=8,max_length=2048")
    for task in TASKS:
        a, b = ours["samples"][task], hf["samples"][task]
        assert len(a) == len(b) == LIMIT
        for x, y in zip(a, b):
            assert x["doc_id"] == y["doc_id"]
            for (la, ga), (lb, gb) in zip((r[0] for r in x["resps"]), (r[0] for r in y["resps"])):
                assert la == pytest.approx(lb, abs=TOL) and ga == gb
        for metric in ("acc,none", "acc_norm,none"):
            if metric in ours["results"][task]:
                assert ours["results"][task][metric] == hf["results"][task][metric]
    assert ours["results"]["efflm_nextline"]["acc,none"] > 0.25  # the dense model beats chance
