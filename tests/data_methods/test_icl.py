"""Demonstrations: KATE returns the true nearest neighbours, random demonstrations are seeded,
contextual calibration equals its definition, and `efflm data icl` end to end."""

import json

import numpy as np
import pytest
import torch

from efflm.cli import main
from efflm.data_methods import calibrate_before_use as cbu
from efflm.data_methods import kate, random_demos
from efflm.data_methods.context import DataContext
from efflm.datasets.embed import TfIdf
from efflm.datasets.text import paragraphs


def test_kate_returns_the_true_nearest_neighbours():
    pool = paragraphs("eval")[:40]
    queries = [p[:120] for p in paragraphs("eval")[5:40:7]]
    got = kate.apply(queries, kate.KATEConfig(k=3, backend="tfidf"), DataContext(pool=pool))
    enc = TfIdf().fit(pool)
    sims = enc.encode(queries) @ enc.encode(pool).T
    for row, s in zip(got, sims):
        assert row[::-1] == sorted(range(len(pool)), key=lambda j: (-s[j], j))[:3]  # nearest last
    assert got[0][-1] == 5  # a paragraph's own opening finds the paragraph
    first = kate.apply(queries, kate.KATEConfig(k=3, backend="tfidf", order="nearest_first"), DataContext(pool=pool))
    assert first == [r[::-1] for r in got]


def test_random_demonstrations_are_distinct_seeded_and_vary_by_input():
    ctx = DataContext(pool=[str(i) for i in range(50)])
    a = random_demos.apply(["x"] * 5, random_demos.RandomDemosConfig(k=4, seed=1), ctx)
    assert a == random_demos.apply(["x"] * 5, random_demos.RandomDemosConfig(k=4, seed=1), ctx)
    assert all(len(set(r)) == 4 for r in a) and len({tuple(r) for r in a}) > 1


def test_calibration_divides_by_the_content_free_distribution(tiny):
    model, tok = tiny
    p = np.array([0.6, 0.3, 0.1])
    assert np.allclose(cbu.calibrate(p, p), [1 / 3] * 3)
    labels = [" yes", " no", " maybe"]
    prompt, cf = "Input: the sky is blue\nLabel:", ("Input: N/A\nLabel:", "Input: \nLabel:")
    probs = cbu.label_probs(model, tok, prompt, labels)
    manual = []
    for lab in labels:
        ids = tok(prompt + lab, add_special_tokens=False)["input_ids"]
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        x = torch.tensor([[tok.bos_token_id] + ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, n:-1], -1)
        manual.append(logp.gather(1, x[0, n + 1 :, None]).sum().item())
    e = np.exp(np.array(manual) - max(manual))
    assert np.allclose(probs, e / e.sum(), atol=1e-5)
    got = cbu.apply(
        [cbu.ICLItem(prompt, cf)], cbu.ContextualCalibrationConfig(), DataContext(model, tok, labels=labels)
    )
    p_cf = np.mean([cbu.label_probs(model, tok, c, labels) for c in cf], axis=0)
    assert np.allclose(got[0], cbu.calibrate(probs, p_cf))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def icl_files(tmp_path):
    plays = {"hamlet": paragraphs("eval")[:6], "macbeth": [p for p in paragraphs("eval") if "MACBETH" in p][:6]}
    pool = [{"text": p[:150], "label": lab} for lab, ps in plays.items() for p in ps[:4]]
    tests = [{"text": p[:150], "label": lab} for lab, ps in plays.items() for p in ps[4:]]
    tests = [{**t, "id": i} for i, t in enumerate(tests)]
    return _write(tmp_path / "test.jsonl", tests), _write(tmp_path / "pool.jsonl", pool)


def test_icl_command_writes_predictions_and_accuracy(tmp_path, icl_files):
    test, pool = icl_files
    out = tmp_path / "o.jsonl"
    args = ["data", "icl", str(test), "--pool", str(pool), "--labels", "hamlet,macbeth", "--model", "tiny-llama",
            "--k", "2", "--backend", "tfidf", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and all(len(r["demonstrations"]) == 2 for r in rows)
    assert all(r["prediction"] in ("hamlet", "macbeth") and abs(sum(r["probs"].values()) - 1) < 1e-6 for r in rows)
    report = json.loads((tmp_path / "o.jsonl.report.json").read_text())
    acc = sum(r["prediction"] == r["label"] for r in rows) / 4
    assert report["accuracy"] == acc and report["scored"] == 4
    assert main([*args[:-1], str(tmp_path / "c.jsonl"), "--calibrate", "--select", "random"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--labels", "hamlet"], "at least two distinct labels"),
        (["--labels", "hamlet,othello"], "test.jsonl: row 3: label 'macbeth' is not one of"),
        (["--labels", "hamlet,macbeth", "--k", "99"], "more than the pool's 8 rows"),
        (["--labels", "hamlet,macbeth", "--model", "no/such-model"], "no/such-model"),
    ],
)
def test_icl_bad_input_is_one_line_and_writes_nothing(tmp_path, icl_files, capsys, extra, message):
    test, pool = icl_files
    assert main(["data", "icl", str(test), "--pool", str(pool), "--model", "tiny-llama", "--out",
                 str(tmp_path / "o.jsonl"), *extra]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("efflm: error:") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o.jsonl").exists()
