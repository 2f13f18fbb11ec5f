"""``efflm report``: one self-contained HTML page, checked in a real headless browser (Debian's
chromium driven by Selenium), and its bad input."""

from pathlib import Path

import pytest

from efflm.bench import db
from efflm.cli import main
from tests.browser import chromium, console_errors, needs_chromium

REFERENCE_DB = Path(__file__).resolve().parents[2] / "results" / "efflm.sqlite"

ROWS = [  # label, recipe, family, ppl, bytes, tok/s, tasks
    ("dense(dtype=float32)", "- method: dense\n", "baseline", 36.7, 538e6, 40.0, {"efflm_nextline": 0.41}),
    ("rtn(bits=4,group_size=64,symmetric=True)", "- method: rtn\n", "quantize", 46.9, 113e6, 96.0, {}),
    ("gptq(bits=3,group_size=64)", "- method: gptq\n", "quantize", 65.1, 100e6, 94.0, {"efflm_nextline": 0.3}),
    ("wanda(sparsity=0.5)", "- method: wanda\n", "prune", 75.2, 538e6, 49.8, {}),
    ("svd(ratio=0.2)", "- method: svd\n", "lowrank", 900.0, 450e6, 19.0, {}),
]


def _db(path):
    conn = db.connect(path)
    for label, recipe, fam, ppl, nbytes, tok_s, tasks in ROWS:
        metrics = {"ppl": ppl, "bytes": nbytes, "tok_s": tok_s, "ttft_ms": 200.0, "peak_rss_mb": 1100.0}
        extra = {"tasks": {t: {"metric": "acc_norm", "value": v, "stderr": 0.02} for t, v in tasks.items()}}
        db.insert(conn, status="ok", model="m", label=label, recipe=recipe, families=fam, metrics=metrics,
                  env={"commit": "abc123"}, extra=extra)  # fmt: skip
    db.insert(conn, status="failed", model="m", label="awq", recipe="- method: awq\n", error="boom")
    return path


def test_report_is_self_contained_and_carries_every_row(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--model", "m", "--db", str(_db(tmp_path / "r.sqlite")), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page  # nothing fetched at view time
    assert "Plotly.react" in page and len(page) > 3_000_000  # the plotting library inlined
    for label, *_ in ROWS:
        assert label in page
    assert "awq" not in page.split("const DATA", 1)[1]  # failed rows are not plotted
    assert "https://arxiv.org/abs/2210.17323" in page and "efflm/quantize/gptq.py" in page


@needs_chromium
def test_report_in_chromium_shows_a_point_per_row_and_filters_by_family(tmp_path):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    out = tmp_path / "report.html"
    assert main(["report", "--model", "m", "--db", str(_db(tmp_path / "r.sqlite")), "--out", str(out)]) == 0
    points = "return document.querySelectorAll('#chart .scatterlayer .point').length"
    with chromium("1300,1000") as driver:
        driver.get(out.resolve().as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(points) > 0)
        n_points = driver.execute_script(points)
        n_rows = len(driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr"))
        Select(driver.find_element(By.ID, "xaxis")).select_by_value("task:efflm_nextline")
        task_points = driver.execute_script(points)
        Select(driver.find_element(By.ID, "xaxis")).select_by_value("mb")
        Select(driver.find_element(By.ID, "family")).select_by_value("quantize")
        families = [tr.get_attribute("data-family") for tr in driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")]
        quantize_points = driver.execute_script(points)
        driver.find_element(By.CSS_SELECTOR, "th[data-key='ppl']").click()  # sort by perplexity
        first = driver.find_element(By.CSS_SELECTOR, "#rows tbody tr td").text
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        errors = console_errors(driver)
    assert not errors, errors
    assert n_points == n_rows == len(ROWS)  # one point per (ok) row
    assert task_points == 2  # only the rows scored on the task
    assert families == ["quantize", "quantize"] and quantize_points == 2
    assert first.startswith("rtn w4")  # the lower perplexity of the two first
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("make_db", [False, True])
def test_report_of_a_missing_or_empty_database_is_one_line_and_writes_nothing(tmp_path, capsys, make_db):
    path = tmp_path / "r.sqlite"
    if make_db:
        db.connect(path).close()
    out = tmp_path / "report.html"
    assert main(["report", "--model", "m", "--db", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error: ") and err.count("\n") == 1
    assert ("not found" in err) if not make_db else ("no current results for model 'm'" in err)
    assert not out.exists()


def _one_row_of_each_kind(path):
    """A database with one row of every kind a command writes: compressed (``efflm bench``),
    quant2 and task-scored rows, a recovered row as the committed reference database holds it
    (the legacy step-list-then-mapping recipe text), fine-tuned and distilled rows as ``efflm
    finetune`` writes them today, and a failed row."""
    import json
    import sqlite3

    from efflm.core import recipe as recipes
    from efflm.finetune.train import TrainConfig
    from efflm.methods import config_from_dict

    ref = sqlite3.connect(REFERENCE_DB)
    ref.row_factory = sqlite3.Row
    conn = db.connect(path)

    def copy(where: str) -> tuple[dict, int]:
        r = dict(ref.execute(f"SELECT * FROM runs WHERE {where} ORDER BY id DESC LIMIT 1").fetchone())
        return r, db.insert(conn, status=r["status"], model="m", label=r["label"], recipe=r["recipe"], families=r["families"],
                  metrics={k: r[k] for k in db.METRICS}, env=json.loads(r["env"]), extra=json.loads(r["extra"]))  # fmt: skip

    copy("label = 'dense(dtype=float32)' AND extra LIKE '%tasks%'")  # dense, task-scored
    copy("families = 'quantize' AND label LIKE 'squeezellm%'")  # the quant2 suite
    recovered, _ = copy("families = 'distill,prune'")  # recovered, legacy recipe text
    assert "\ndata: " in conn.execute("SELECT recipe FROM runs ORDER BY id DESC").fetchone()[0]
    metrics = {k: recovered[k] for k in db.METRICS}  # measured like every bench row
    train = TrainConfig(steps=10)
    for steps, fam in (([{"method": "lora", "r": 8}], "finetune"), ([{"method": "kd"}], "distill")):
        recipe = [config_from_dict(s) for s in [{"method": "rtn", "bits": 4}, *steps]]
        label = recipes.run_label(recipe, "domain", train.steps)
        text = recipes.to_stored(recipe, data="domain", train=train.to_dict())
        assert recipes.stored_label(text) == label
        db.insert(conn, status="ok", model="m", label=label, recipe=text, families=f"{fam},quantize", metrics=metrics,
                  env={"commit": "abc123"}, extra={"train": train.to_dict(), "data": "domain",
                                                   "notes": [f"{fam}: a fallback the run took"]})  # fmt: skip
    db.insert(conn, status="failed", model="m", label="awq", recipe="- method: awq\n", error="boom")
    conn.close()
    return path


def test_report_and_leaderboard_read_every_row_kind(tmp_path, capsys):
    path = _one_row_of_each_kind(tmp_path / "kinds.sqlite")
    assert main(["leaderboard", "--model", "m", "--db", str(path), "--out-dir", str(tmp_path)]) == 0
    board = (tmp_path / "leaderboard.md").read_text()
    assert main(["report", "--model", "m", "--db", str(path), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text().split("const DATA", 1)[1]
    for kind in ("squeezellm(", "[domain, 100 steps]", "lora(", "kd(", "[domain, 10 steps]"):
        assert kind in board and kind in page, kind
    assert "efflm_cloze" in board and "failed: boom" in board
    assert "Fallbacks:" in board and "finetune: a fallback the run took" in board


def test_report_and_leaderboard_read_the_committed_reference_database(tmp_path, capsys):
    ref = str(REFERENCE_DB)
    assert main(["leaderboard", "--db", ref, "--out-dir", str(tmp_path)]) == 0
    assert main(["report", "--db", ref, "--out", str(tmp_path / "r.html")]) == 0


def test_before_any_run_report_and_leaderboard_show_the_committed_reference(tmp_path, monkeypatch, capsys):
    """In a checkout with no runs/ yet, the read-only commands fall back to results/efflm.sqlite."""
    import shutil

    (tmp_path / "results").mkdir()
    shutil.copy(REFERENCE_DB, tmp_path / "results" / "efflm.sqlite")
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0 and (tmp_path / "runs" / "report.html").is_file()
    assert main(["leaderboard"]) == 0 and (tmp_path / "runs" / "leaderboard.md").is_file()
    assert not (tmp_path / "runs" / "efflm.sqlite").exists()  # read, never created
