import pytest
import torch

from efflm.core.errors import EfflmError
from efflm.datasets import text
from efflm.models.tiny import tiny_tokenizer

TOK = tiny_tokenizer()  # one instance: the tokenized calibration split is cached per tokenizer


def tiny_tokenizer():  # noqa: F811
    return TOK


def test_splits_are_fixed_and_disjoint():
    ev, cal = text.split_files("eval"), text.split_files("calib")
    assert [p.name.removesuffix("_gut.txt") for p in ev] == list(text.EVAL_PLAYS)
    assert not {p.name for p in ev} & {p.name for p in cal}
    assert len(ev) + len(cal) == len(text.texts()) >= 40
    # the First Folio editions repeat the same plays: never used
    assert not any(p.name.endswith("_gut_f.txt") for p in ev + cal)


def test_calibration_never_sees_evaluation_text():
    tok = tiny_tokenizer()
    eval_text = text.split_text("eval")
    windows = text.calibration_windows(tok, 16, 256, seed=3)
    for w in windows:
        chunk = tok.decode(w.tolist())
        # a 256-byte window is distinctive: it must not occur in the evaluation plays
        assert chunk not in eval_text
        assert chunk in text.split_text("calib")


def test_calibration_sampler_is_seeded():
    tok = tiny_tokenizer()
    a = text.calibration_windows(tok, 4, 64, seed=0)
    assert torch.equal(a, text.calibration_windows(tok, 4, 64, seed=0))
    assert not torch.equal(a, text.calibration_windows(tok, 4, 64, seed=1))
    assert a.shape == (4, 64)


def test_prefix_tokens_equal_full_tokenization_prefix():
    tok = tiny_tokenizer()
    full = text.tokenize(tok, text.split_text("eval")[:20000])
    assert torch.equal(text.prefix_tokens(tok, text.split_text("eval"), 5000), full[:5000])


def test_read_text_file_errors(tmp_path):
    with pytest.raises(EfflmError, match="not found"):
        text.read_text_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(EfflmError, match="empty"):
        text.read_text_file(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EfflmError, match="not UTF-8"):
        text.read_text_file(tmp_path / "bin.txt")
