"""The EFFLM_* environment variables: declared once, validated, documented, recorded in every row."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from efflm.core import settings
from efflm.core.errors import EfflmError

ROOT = Path(__file__).resolve().parents[2]


def _render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_efflm_variable_the_code_reads_is_declared_and_read_only_in_settings():
    names = set()
    for path in (ROOT / "efflm").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"\bEFFLM_[A-Z0-9_]+\b", text))
        if path.name != "settings.py":
            assert not re.search(r"environ(\.get)?[\[(]\s*[\"']EFFLM_", text), f"{path} reads EFFLM_* itself"
    assert names <= set(settings.BY_NAME), names - set(settings.BY_NAME)


@pytest.mark.parametrize("name,bad", [("EFFLM_Q4_KERNEL", "2"), ("EFFLM_PROGRESS", "yes"), ("EFFLM_DEBUG", "true")])
def test_a_bad_value_is_a_one_line_error(monkeypatch, name, bad):
    monkeypatch.setenv(name, bad)
    with pytest.raises(EfflmError) as e:
        settings.check()
    assert "\n" not in str(e.value) and name in str(e.value) and repr(bad) in str(e.value)


def test_the_cli_reports_a_bad_value_in_one_line_with_exit_2(monkeypatch, capsys):
    from efflm.cli import main

    monkeypatch.setenv("EFFLM_SWEEP_KERNEL", "off")
    assert main(["methods"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("efflm: error: EFFLM_SWEEP_KERNEL='off'") and err.count("\n") == 1


def test_accessors_type_the_values_and_unset_or_empty_means_the_default(monkeypatch, tmp_path):
    for s in settings.SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    assert settings.q4_kernel() and settings.sweep_kernel() and settings.fast_decode() and not settings.debug()
    assert settings.isa() == "auto"
    assert settings.progress() is None and settings.cache_dir() == Path.home() / ".cache" / "efflm"
    monkeypatch.setenv("EFFLM_FAST_DECODE", "")
    assert settings.fast_decode()
    monkeypatch.setenv("EFFLM_FAST_DECODE", "0")
    monkeypatch.setenv("EFFLM_PROGRESS", "1")
    monkeypatch.setenv("EFFLM_CACHE", str(tmp_path))
    assert not settings.fast_decode() and settings.progress() is True and settings.cache_dir() == tmp_path
    assert settings.recorded() == {"EFFLM_FAST_DECODE": "0", "EFFLM_ISA": "auto", "EFFLM_Q4_KERNEL": "1",
                                   "EFFLM_SWEEP_KERNEL": "1"}  # fmt: skip


def test_the_docs_table_is_the_render_of_the_declarations():
    mod = _render_docs()
    doc = (ROOT / "docs" / "methods.md").read_text()
    assert mod.section(doc, "settings") == settings.render_table().strip("\n"), (
        "docs/methods.md's Environment variables table is stale: run `python benchmarks/render_docs.py`"
    )


def test_render_docs_rewrites_every_generated_section_and_nothing_else(tmp_path):
    mod = _render_docs()
    for rel in ("docs/methods.md", "docs/architecture.md", "pyproject.toml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    for pkg in (ROOT / "efflm").glob("*/__init__.py"):  # the layer table reads the packages' docstrings
        (tmp_path / "efflm" / pkg.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "efflm" / pkg.parent.name / "__init__.py").write_text(pkg.read_text())
    for mod_file in (ROOT / "efflm").glob("*.py"):
        (tmp_path / "efflm" / mod_file.name).write_text(mod_file.read_text())
    doc = tmp_path / "docs" / "methods.md"
    begin, end = mod.markers("settings")
    text = doc.read_text()
    doc.write_text(text[: text.index(begin) + len(begin)] + "\nold table\n" + text[text.index(end) :])
    assert mod.main(["--root", str(tmp_path)]) == 0
    assert doc.read_text() == (ROOT / "docs" / "methods.md").read_text()
    assert (tmp_path / "docs" / "architecture.md").read_text() == (ROOT / "docs" / "architecture.md").read_text()


def test_a_result_row_records_the_kernel_settings_and_the_decode_step_chosen(tiny, tmp_path, monkeypatch):
    from efflm.bench import db, leaderboard, runner
    from efflm.bench.worker import measure
    from efflm.core import recipe as recipes
    from efflm.eval import metrics
    from efflm.eval.env import environment

    monkeypatch.setattr(metrics, "bandwidth_gbs", lambda: 20.0)  # not the 512 MiB measurement
    monkeypatch.setenv("EFFLM_FAST_DECODE", "0")
    model, tok = tiny
    data = {"status": "ok", **measure(model, tok, "tiny-llama", 0.0, 1, 16, 1, 8, 4, 1)}
    recipe = recipes.from_yaml("- method: dense\n")
    opts = runner.BenchOptions("tiny-llama", [recipe], tmp_path / "r.sqlite")
    conn = db.connect(opts.db_path)
    runner.record(opts, recipe, conn, environment(), data)
    (row,) = db.rows(conn)
    env, extra = json.loads(row["env"]), json.loads(row["extra"])
    assert env["settings"] == settings.recorded() and env["settings"]["EFFLM_FAST_DECODE"] == "0"
    assert env["kernels"]["fast_decode"] == "torch (turned off by EFFLM_FAST_DECODE=0)"
    assert env["kernels"]["q4"] in ("c", "torch") and env["kernels"]["sweep"] in ("c", "torch")
    assert "kernels" not in extra
    md = leaderboard.markdown("tiny-llama", [row])
    assert "Kernels: q4 matmul" in md and "EFFLM_FAST_DECODE=0" in md
