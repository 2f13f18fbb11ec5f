"""``efflm data ...``: JSONL in, JSONL out (fields and order kept), a report; bad input is one
line, exit 2, and nothing written."""

import json

import pytest

from efflm.cli import main


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [
    {"id": 1, "text": "the quick brown fox jumps over the lazy dog again and again", "tag": "a"},
    {"id": 2, "text": "something else entirely, a second document with its own words"},
    {"id": 3, "text": "The quick brown fox jumps over the lazy dog again and again", "tag": "c"},
    {"id": 4, "prompt": "a question", "completion": "an answer"},
    {"id": 5, "messages": [{"role": "user", "content": "a question"}, {"role": "assistant", "content": "an answer"}]},
]


def test_dedup_keeps_first_occurrences_fields_and_order(tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["data", "dedup", str(src), "--out", str(out), "--method", "exact"]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [ROWS[0], ROWS[1], ROWS[3]]  # 3 re-cases 1; 5 is 4 in messages form
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert report["rows_in"] == 5 and report["rows_out"] == 3
    assert report["clusters"] == [{"kept": 0, "removed": [2]}, {"kept": 3, "removed": [4]}]
    assert "5 rows in, 3 kept" in capsys.readouterr().out


def test_dedup_minhash_with_a_named_field(tmp_path):
    rows = [{"body": r["text"]} for r in ROWS[:3]]
    src = write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    assert main(["data", "dedup", str(src), "--out", str(out), "--field", "body", "--threshold", "0.9"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows[:2]


@pytest.mark.parametrize(
    "lines, extra, message",
    [
        (['{"text": "ok"}', "{not json"], [], "in.jsonl:2: invalid JSON"),
        (['{"text": "ok"}', "[1, 2]"], [], "in.jsonl:2: expected a JSON object"),
        (['{"body": "no text"}'], [], "in.jsonl:1: missing text field 'text'"),
        (['{"text": 3}'], [], "field 'text' is not a string"),
        (["", "  "], [], "no rows (empty input)"),
        (['{"text": "ok"}'], ["--threshold", "0"], "must be in (0, 1]"),
        (['{"text": "ok"}'], ["--threshold", "1.5"], "must be in (0, 1]"),
        (['{"text": "ok"}'], ["--num-perm", "4"], "must be ≥ 16"),
        (['{"text": "ok"}'], ["--method", "fuzzy"], "invalid choice"),
    ],
)
def test_dedup_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, lines, extra, message):
    src = write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(["data", "dedup", str(src), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error:") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_dedup_refuses_missing_input_and_writing_over_it(tmp_path, capsys):
    assert main(["data", "dedup", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "input not found" in capsys.readouterr().err
    src = write(tmp_path / "in.jsonl", ROWS)
    assert main(["data", "dedup", str(src), "--out", str(src)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert json.loads(src.read_text().splitlines()[0]) == ROWS[0]


def test_data_commands_start_without_torch(tmp_path):
    """The data commands are text processing: the CLI reaches them without importing torch."""
    import subprocess
    import sys

    src = write(tmp_path / "in.jsonl", ROWS)
    code = (
        "import sys; from efflm.cli import main; "
        f"rc = main(['data', 'dedup', {str(src)!r}, '--out', {str(tmp_path / 'o.jsonl')!r}]); "
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
