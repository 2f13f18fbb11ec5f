"""``--calib FILE``: your own calibration data (.txt, or .jsonl rows of text or chat messages)."""

import hashlib
import json
import random

import pytest
import torch

from efflm.cli import main
from efflm.core.errors import EfflmError
from efflm.datasets import calib_file as cf
from efflm.datasets import text
from efflm.models.tiny import tiny_tokenizer

TOK = tiny_tokenizer()  # byte-level: one token per UTF-8 byte
PROSE = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))  # ~2.2k bytes


def write(tmp_path, name: str, data: str | bytes):
    p = tmp_path / name
    (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return p


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_txt_windows_come_from_the_file_seeded_as_the_builtin_draw(tmp_path):
    p = write(tmp_path, "c.txt", PROSE)
    w = cf.calib_windows(TOK, 4, 64, p, seed=0)
    assert w.shape == (4, 64) and w.dtype == torch.long
    assert torch.equal(w, text.draw_windows(text.tokenize(TOK, PROSE), 4, 64, seed=0))
    assert torch.equal(w, cf.calib_windows(TOK, 4, 64, str(p), seed=0))
    assert not torch.equal(w, cf.calib_windows(TOK, 4, 64, p, seed=1))
    for row in w:
        assert TOK.decode(row.tolist()) in PROSE


def test_jsonl_text_rows_are_joined_with_the_separator(tmp_path):
    p = write(tmp_path, "c.jsonl", jsonl([{"text": "alpha"}, "", {"text": "beta", "id": 3}]))
    assert cf.read_calib_text(p, TOK) == "alpha" + cf.SEPARATOR + "beta"


def test_jsonl_messages_render_through_the_chat_template(tmp_path):
    msgs = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]
    p = write(tmp_path, "chat.jsonl", jsonl([{"messages": msgs}, {"text": "plain"}]))
    got = cf.read_calib_text(p, TOK)
    assert got == TOK.apply_chat_template(msgs, tokenize=False) + cf.SEPARATOR + "plain"
    assert got.startswith("<s>user\nWhat is two plus two?</s>\n<s>assistant\nFour.</s>")


def test_messages_need_a_chat_template(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = None
    p = write(tmp_path, "chat.jsonl", jsonl([{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(EfflmError, match=r"chat.jsonl:1: chat 'messages' need a chat template"):
        cf.read_calib_text(p, tok)


def test_a_template_that_raises_is_one_line(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    p = write(tmp_path, "chat.jsonl", jsonl([{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(EfflmError, match="chat template rejected these messages: roles must alternate"):
        cf.read_calib_text(p, tok)


@pytest.mark.parametrize(
    "name,data,pattern",
    [
        ("empty.txt", "", "calibration file is empty"),
        ("blank.jsonl", "\n  \n\n", "calibration file is empty"),
        ("latin1.txt", "café".encode("latin-1"), "not UTF-8 text"),
        ("data.csv", "a,b\n1,2\n", r"unknown calibration file type '\.csv' \(expected \.txt or \.jsonl\)"),
        ("noext", "words", r"unknown calibration file type '\(none\)'"),
        ("bad.jsonl", jsonl([{"text": "ok"}, "{not json"]), r"bad.jsonl:2: not JSON"),
        ("list.jsonl", jsonl([[1, 2]]), r"list.jsonl:1: not a JSON object"),
        ("other.jsonl", jsonl([{"prompt": "p", "completion": "c"}]), r"other.jsonl:1: a calibration row needs"),
        ("num.jsonl", jsonl([{"text": 5}]), r"num.jsonl:1: a calibration row needs"),
        ("badmsg.jsonl", jsonl([{"messages": [{"role": "user"}]}]), r"badmsg.jsonl:1: a calibration row needs"),
        ("nomsg.jsonl", jsonl([{"messages": []}]), r"nomsg.jsonl:1: a calibration row needs"),
        ("emptyrows.jsonl", jsonl([{"text": ""}, {"text": ""}]), "no calibration text"),
        ("surrogate.jsonl", '{"text": "\\ud800"}\n', r"surrogate.jsonl:1: text is not valid Unicode"),
    ],
)
def test_bad_files_are_one_error(tmp_path, name, data, pattern):
    p = write(tmp_path, name, data)
    with pytest.raises(EfflmError, match=pattern) as e:
        cf.check_calib(TOK, 1, 8, p)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    for p in (tmp_path / "nope.txt", tmp_path):
        with pytest.raises(EfflmError, match="calibration file not found"):
            cf.check_calib(TOK, 1, 8, p)


def test_too_few_tokens_says_how_many_there_are_and_are_needed(tmp_path):
    p = write(tmp_path, "small.txt", "x" * 100)  # 100 tokens
    with pytest.raises(EfflmError) as e:
        cf.check_calib(TOK, 8, 32, p)
    assert str(e.value) == (
        f"too few calibration tokens: {p} has 100 tokens, 256 are needed for the requested 8 samples x 32 tokens"
    )
    with pytest.raises(EfflmError, match="has 100 tokens, 101 are needed"):  # one window needs a token to spare
        cf.check_calib(TOK, 1, 100, p)
    cf.check_calib(TOK, 3, 33, p)  # 99 tokens of windows fit
    with pytest.raises(EfflmError, match="positive samples and length"):
        cf.check_calib(TOK, 0, 8, tmp_path / "never-read.txt")


def test_builtin_split_when_no_file(monkeypatch):
    seen = []
    monkeypatch.setattr(text, "calibration_windows", lambda *a: seen.append(a) or "builtin")
    assert cf.calib_windows(TOK, 2, 16, None, seed=5) == "builtin" and seen == [(TOK, 2, 16, 5)]


def test_file_digest_is_the_bytes_sha256(tmp_path):
    p = write(tmp_path, "c.txt", PROSE)
    assert cf.file_digest(p) == hashlib.sha256(PROSE.encode()).hexdigest()[:16]


def test_tokens_are_read_again_when_the_file_changes(tmp_path):
    p = write(tmp_path, "c.txt", "a" * 50)
    assert cf.calib_file_tokens(p, TOK).numel() == 50
    p.write_text("b" * 70)
    assert cf.calib_file_tokens(p, TOK).numel() == 70


def _fuzz_line(rng: random.Random) -> str:
    pieces = [
        '{"text": "hello world"}',
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": 1}]}',
        '{"text": null}',
        "[[[[[[",
        "[" * 5000,
        "{}",
        "null",
        '"text"',
        "",
        "\x00\x01",
        '{"text": "\\ud800"}',
    ]
    if rng.random() < 0.5:
        return rng.choice(pieces)
    return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(0, 30)))


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_jsonl_reader_gives_windows_or_one_error(tmp_path, seed):
    rng = random.Random(seed)
    for i in range(40):
        p = tmp_path / f"f{i}.jsonl"
        if rng.random() < 0.3:
            p.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
        else:
            p.write_text(
                "\n".join(_fuzz_line(rng) for _ in range(rng.randrange(0, 6))), encoding="utf-8", errors="surrogatepass"
            )
        try:
            w = cf.calib_windows(TOK, 2, 4, p)
        except EfflmError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert w.shape == (2, 4)


# the command line: --calib on every command with --calib-samples, checked before weights load


@pytest.fixture
def no_weights(monkeypatch):
    import efflm.io.load

    def boom(*a, **k):
        raise AssertionError("weights loaded before the input was refused")

    monkeypatch.setattr(efflm.io.load, "load", boom)


def one_line(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("efflm: error: "), err
    return lines[0]


@pytest.mark.parametrize("cmd", ["compress", "eval", "generate", "serve", "bench"])
def test_every_calibrating_command_has_calib(capsys, cmd):
    assert main([cmd, "--help"]) == 0
    assert "--calib FILE" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,data,pattern",
    [
        ("missing.txt", None, "calibration file not found"),
        ("empty.txt", "", "calibration file is empty"),
        ("bad.txt", b"\xff\xfe\x00", "not UTF-8"),
        ("rows.jsonl", jsonl([{"id": 1}]), "a calibration row needs"),
        ("small.txt", "tiny", "too few calibration tokens"),
    ],
)
def test_compress_refuses_a_bad_calib_before_the_weights_load(capsys, tmp_path, gptq, no_weights, name, data, pattern):
    p = tmp_path / name if data is None else write(tmp_path, name, data)
    out = tmp_path / "m"
    msg = one_line(capsys, "compress", "--model", "tiny-llama", "--recipe", gptq, "--calib", p, "--out", out)
    assert pattern in msg and not out.exists()


def test_eval_and_bench_refuse_a_bad_calib(capsys, tmp_path, gptq, no_weights):
    bad = write(tmp_path, "c.jsonl", "{oops\n")
    assert "c.jsonl:1: not JSON" in one_line(capsys, "eval", "--model", "tiny-llama", "--recipe", gptq, "--calib", bad)
    db = tmp_path / "db.sqlite"
    msg = one_line(capsys, "bench", "--model", "tiny-llama", "--recipe", gptq, "--db", db, "--calib", bad)
    assert "not JSON" in msg and not db.exists()


def test_compress_calibrates_on_the_file(tmp_path, gptq):
    from safetensors.torch import load_file

    a = write(tmp_path, "a.txt", PROSE)
    b = write(tmp_path, "b.jsonl", jsonl([{"text": PROSE.upper()}]))
    args = ["compress", "--model", "tiny-llama", "--recipe", gptq, "--calib-samples", "4", "--calib-len", "64"]
    for name, f in (("a1", a), ("a2", a), ("b", b)):
        assert main([*args, "--calib", str(f), "--out", str(tmp_path / name)]) == 0

    def weights(name):
        return load_file(tmp_path / name / "model.safetensors")

    wa1, wa2, wb = weights("a1"), weights("a2"), weights("b")
    assert all(torch.equal(wa1[k], wa2[k]) for k in wa1)  # same file, same windows
    assert any(not torch.equal(wa1[k], wb[k]) for k in wa1)  # another file calibrates differently


def test_bench_rows_calibrate_on_the_file_and_record_its_digest(tmp_path, monkeypatch):
    from efflm.bench import worker

    p = write(tmp_path, "c.txt", PROSE)
    seen = {}
    real = worker.load_and_apply

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(worker, "load_and_apply", spy)
    cfg = {"method": "gptq", "bits": 4, "group_size": 32}
    from efflm.methods import config_from_dict

    r = worker.run("tiny-llama", [config_from_dict(cfg)], seq_len=32, windows=1, prompt_len=8, new_tokens=2, reps=1,
                   calib_samples=2, calib_len=32, calib_file=str(p))  # fmt: skip
    assert seen["calib_file"] == str(p)
    assert r["calib_sha256"] == cf.file_digest(p) and r["calib_file"] == "c.txt"


def test_bench_rows_record_the_calib_file_end_to_end(tmp_path, monkeypatch):
    import sqlite3

    p = write(tmp_path, "c.txt", PROSE)
    monkeypatch.chdir(tmp_path)  # a relative --calib reaches the worker as an absolute path
    db = tmp_path / "db.sqlite"
    argv = ["bench", "--model", "tiny-llama", "--methods", "gptq", "--db", str(db), "--out-dir", str(tmp_path),
            "--seq-len", "32", "--windows", "1", "--reps", "1", "--prompt-len", "8", "--new-tokens", "2",
            "--calib", "c.txt", "--calib-samples", "2", "--calib-len", "64"]  # fmt: skip
    assert main(argv) == 0
    (status, extra), *_ = sqlite3.connect(db).execute("SELECT status, extra FROM runs").fetchall()
    assert status == "ok"
    assert json.loads(extra)["calib_sha256"] == cf.file_digest(p)


def test_calib_does_not_go_where_it_would_be_ignored(capsys, tmp_path, gptq, no_weights):
    p = write(tmp_path, "c.txt", PROSE)
    db = tmp_path / "db.sqlite"
    msg = one_line(capsys, "bench", "--model", "tiny-llama", "--suite", "finetune", "--db", db, "--calib", p)
    assert "--calib goes with bench rows" in msg and not db.exists()
    args = ("--calib", p, "--calib-samples", "2", "--calib-len", "64", "--seq-len", "32", "--windows", "1")
    msg = one_line(capsys, "eval", "--model", "tiny-llama", "--recipe", gptq, "--adapter", tmp_path / "ad", *args)
    assert "--calib goes without --adapter" in msg
