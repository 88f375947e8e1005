"""The ft-harness command: help, list, run/report exit codes and the report formats."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from harness.report import AdapterRun, TestOutcome, aggregate, render


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_help_explains_commands():
    out = _cli("--help").stdout
    for word in ("run", "report", "list", "sweep", "--adapter harness.mutants:ArgsJsonBeatsCli", "-k best_checkpoint",
                 "--ft-report"):
        assert word in out
    assert "--format {md,json,junit,text,html}" in _cli("report", "--help").stdout


def test_list_shows_scenarios_seeds_capabilities():
    result = _cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("test_best_checkpoint.py::test_seed_best_between_saves_is_kept" in ln and " 004 " in ln for ln in lines)
    assert any("test_quantized_lora_resume.py::test_resume_with_other_quantization_is_refused" in ln
               and "quant-nf4" in ln for ln in lines)
    # requirements that only some parametrisations have are listed with them
    resume = next(ln for ln in lines if "test_quantized_lora_resume.py::test_resume_matches_uninterrupted" in ln)
    assert "quant-nf4 for [" in resume and "quanto-int8 for [" in resume, resume


def test_report_json_and_exit_codes(tmp_path):
    sel = ["--", "-k", "test_never_inherited_keys or test_load_args_false", "-m", "not ft_gpu"]
    ok = _cli("report", "--format", "json", "-o", str(tmp_path / "r.json"), *sel, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["format"] == "ft-harness-report/1"
    ids = {s["id"]: s for s in data["scenarios"]}
    cell = ids["test_args_precedence.py::test_never_inherited_keys"]["results"]["reference"]
    assert cell["outcome"] == "passed" and ids["test_args_precedence.py::test_never_inherited_keys"]["seed"] == "000"
    assert "[reference] ok" in ok.stderr  # progress line per test
    # (the resolution property: the mutant's cheapest red, no training run; 4 s against 14 s for a trained one)
    bad = _cli("run", "--adapter", "harness.mutants:ArgsJsonBeatsCli", "-k", "test_priority_property",
               "-m", "not ft_gpu", "--tb", cwd=tmp_path)  # pytest options without '--'
    assert bad.returncode == 1 and "FAIL: " in bad.stdout and "seed 000" in bad.stdout
    # --tb: the whole failure after the table, untruncated, with the traceback
    assert "FAILED " in bad.stdout and "test_args_precedence.py::test_priority_property" in bad.stdout
    assert "expected 'lora' from the cli layer" in bad.stdout and "test_args_precedence.py:" in bad.stdout


def test_run_with_nothing_collected_exits_5(monkeypatch, capsys):
    """pytest's exit 5 (the -k/-m filters matched nothing) is passed on with a line saying so, not a green table.
    (In-process with the run stubbed: the subprocess path is the test above's.)"""
    import harness.cli
    import harness.report

    asked = []

    def run_adapter(target, options, pytest_args, **kwargs):
        asked.append(pytest_args)
        return AdapterRun("reference", "reference", {}, 5, 0.1, [])

    monkeypatch.setattr(harness.report, "run_adapter", run_adapter)
    assert harness.cli.main(["run", "--", "-k", "no_such_scenario_xyz"]) == 5
    assert asked == [["-k", "no_such_scenario_xyz"]]
    assert "no scenario was collected (pytest exit 5)" in capsys.readouterr().err


def _runs():
    a = AdapterRun("reference", "reference", {}, 0, 1.5, [
        TestOutcome("s/test_x.py::test_a[cpu]", "test_x.py::test_a", "passed", "", 0.5, "004"),
        TestOutcome("s/test_x.py::test_a[cuda]", "test_x.py::test_a", "skipped", "gpu: needs CUDA", 0.0, "004")])
    b = AdapterRun("m:Bad", "bad", {}, 1, 2.0, [
        TestOutcome("s/test_x.py::test_a[cpu]", "test_x.py::test_a", "failed", "[seed 004] no checkpoint | x", 0.7,
                    "004")])
    return [a, b]


def test_render_formats():
    runs = _runs()
    assert aggregate(runs[0])["test_x.py::test_a"]["outcome"] == "passed"
    md = render(runs, "md")
    assert "| test_x.py::test_a | 004 | pass | FAIL: [seed 004] no checkpoint \\| x |" in md
    root = ET.fromstring(render(runs, "junit"))
    suites = root.findall("testsuite")
    assert [s.get("failures") for s in suites] == ["0", "1"] and suites[0].get("skipped") == "1"
    assert "test_x.py::test_a" in render(runs, "text")
    with pytest.raises(ValueError):
        render(runs, "pdf")


def test_json_reports_merge_into_one_matrix(tmp_path):
    """Reports made in different environments (one per framework) merge into one matrix with versions."""
    from harness.report import load_runs

    run_a = AdapterRun("swift", "swift 4.6.0", {}, 1, 2.0,
                       [TestOutcome("scenarios/test_x.py::test_a[cpu]", "test_x.py::test_a", "failed", "boom", 1.0,
                                    "000")], versions={"ms-swift": "4.6.0", "transformers": "5.19.0"})
    run_b = AdapterRun("reference", "reference", {}, 0, 1.0,
                       [TestOutcome("scenarios/test_x.py::test_a[cpu]", "test_x.py::test_a", "passed", "", 0.5,
                                    "000")])
    (tmp_path / "a.json").write_text(render([run_a], "json"))
    (tmp_path / "b.json").write_text(render([run_b], "json"))
    merged = load_runs(tmp_path / "a.json") + load_runs(tmp_path / "b.json")
    assert merged[0].versions["ms-swift"] == "4.6.0" and merged[0].tests[0].reason == "boom"
    table = render(merged, "md")
    assert "swift (ms-swift 4.6.0)" in table and "FAIL: boom" in table and "| pass |" in table
    result = _cli("report", "--merge", str(tmp_path / "a.json"), "--merge", str(tmp_path / "b.json"),
                  "--format", "md")
    assert result.returncode == 1 and "FAIL: boom" in result.stdout, result.stderr
    # the same target from two environments (ms-swift 4.x and 3.x) gets one column each
    run_c = AdapterRun("swift", "swift 3.1.1", {}, 0, 1.0,
                       [TestOutcome("scenarios/test_x.py::test_a[cpu]", "test_x.py::test_a", "passed", "", 0.5,
                                    "000")], versions={"ms-swift": "3.1.1"})
    both = render([run_a, run_c], "md", reasons=False)
    assert "| FAIL | pass |" in both and "(ms-swift 3.1.1)" in both
    assert set(json.loads(render([run_a, run_c], "json"))["scenarios"][0]["results"]) == {"swift@4.6.0", "swift@3.1.1"}
    # several files per --merge, and quoted globs
    globbed = _cli("report", "--merge", str(tmp_path / "[ab].json"), "--format", "json")
    assert {a["target"] for a in json.loads(globbed.stdout)["adapters"]} == {"swift", "reference"}, globbed.stderr
    assert _cli("report", "--merge", str(tmp_path / "zz*.json")).stderr.strip().endswith("matches no file")
    allowed = _cli("report", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--allow-failures",
                   "-o", str(tmp_path / "new" / "m.md"))
    assert allowed.returncode == 0 and "FAIL: boom" in (tmp_path / "new" / "m.md").read_text()
    (tmp_path / "bad.json").write_text("{}")
    bad = _cli("report", "--merge", str(tmp_path / "bad.json"))
    assert bad.returncode != 0 and "bad.json" in bad.stderr
