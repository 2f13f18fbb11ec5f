"""``efflm report``: one self-contained HTML page, checked in a real headless browser (Debian's
chromium driven by Selenium), and its bad input."""

import pytest

from efflm.bench import db
from efflm.cli import main
from tests.browser import chromium, console_errors, needs_chromium

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
