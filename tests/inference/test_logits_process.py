import torch

from efflm.inference.logits_process import Adjust, adjust, token_logprobs


def test_penalties_follow_openais_formula_and_bias_adds():
    logits = torch.zeros(6)
    out = adjust(logits, Adjust(presence=0.5, frequency=0.25, bias=((5, 3.0),)), [1, 1, 2])
    assert out.tolist() == [0.0, -1.0, -0.75, 0.0, 0.0, 3.0]  # 1: 0.5 + 2·0.25; 2: 0.5 + 0.25
    assert logits.eq(0).all()  # the caller's row is untouched
    assert not Adjust().active and Adjust(bias=((0, 1.0),)).active


def test_token_logprobs_are_log_softmax_with_the_top_alternatives():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    lp, top = token_logprobs(logits, 2, 2)
    want = torch.log_softmax(logits, -1)
    assert abs(lp - float(want[2])) < 1e-6
    assert [i for i, _ in top] == [1, 2] and abs(top[0][1] - float(want[1])) < 1e-6
    assert token_logprobs(logits, 0, 0)[1] == []
