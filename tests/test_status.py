"""``ft-harness status``: the per-framework pages, rendered from hand-made runs (nothing is trained)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.report.model import AdapterRun, TestOutcome, document
from harness.report.status import status_columns, status_pages

ROOT = Path(__file__).resolve().parents[1]
SEED4 = "test_best_checkpoint.py::test_seed_best_between_saves_is_kept"
MERGE = "test_lora_merge.py::test_merged_model_is_the_trained_model"


def _t(scenario: str, outcome: str, reason: str = "", param: str = "cpu") -> TestOutcome:
    return TestOutcome(f"scenarios/{scenario}[{param}]", scenario, outcome, reason, 0.5, None)


def _run(target: str, version: str, tests: list[TestOutcome], options=None, fw="llamafactory") -> AdapterRun:
    return AdapterRun(target, f"{fw} {version}", options or {}, 1, 10.0, tests,
                      {"transformers": "5.6.0", "peft": "0.18.1", fw: version})


RUNS = [
    _run("llamafactory", "0.9.10", [_t(SEED4, "failed", "no checkpoint-25 on disk (checkpoints: [20, 40])"),
                                    _t(MERGE, "passed")]),
    _run("llamafactory", "0.9.3", [_t(SEED4, "passed"), _t(MERGE, "failed", "logits differ by 0.3", "cpu-nf4"),
                                   _t(MERGE, "passed", "", "cpu-none")]),
    _run("llamafactory", "0.9.5", [_t(SEED4, "failed", "no checkpoint-25 on disk (checkpoints: [20, 40])"),
                                   _t(MERGE, "passed", "", "cpu-nf4")]),
    _run("llamafactory", "0.9.5", [_t(SEED4, "failed", "final model is checkpoint-20")],
         options={"load_best_model_at_end": "true"}),
    _run("swift", "4.6.0", [_t(SEED4, "failed", "no checkpoint-5")], fw="ms-swift"),
    AdapterRun("harness.mutants:X", "X", {}, 1, 1.0, [_t(SEED4, "failed")], {}),  # no framework version: left out
]


def test_columns_group_by_framework_in_release_order():
    cols = status_columns(RUNS)
    assert list(cols) == ["llamafactory", "ms-swift"]
    assert [c.label for c in cols["llamafactory"]] == ["0.9.3", "0.9.5", "0.9.5 [load_best_model_at_end=true]",
                                                       "0.9.10"]  # 0.9.10 after 0.9.5: versions, not strings


def test_page_has_matrix_flips_causes_and_versions():
    refs = {SEED4: [("ms-swift #3314", "https://github.com/modelscope/ms-swift/issues/3314")]}
    page = status_pages(RUNS, "2026-12-07", refs)["llamafactory.md"]
    assert page.startswith("# llamafactory: status per release\n\nGenerated 2026-12-07")
    assert f"| {SEED4} | pass | FAIL | FAIL | FAIL |" in page
    assert f"| {MERGE} | FAIL | pass | - | pass |" in page  # worst over parametrisations; '-' where not run
    # flips only between consecutive releases with the same options (the load_best column is its own line)
    assert f"- `{SEED4}`: first bad: 0.9.5 (last good 0.9.3)" in page
    assert f"- `{MERGE}`: first fixed: 0.9.5 (last bad 0.9.3)" in page
    # one line per run of releases with the same cause, the upstream thread linked
    assert ("- `" + SEED4 + "` (upstream: [ms-swift #3314](https://github.com/modelscope/ms-swift/issues/3314))"
            in page)
    assert "  - 0.9.5 .. 0.9.5 [load_best_model_at_end=true]" not in page
    assert "  - 0.9.5: no checkpoint-25 on disk (checkpoints: [20, 40])" in page
    assert "  - 0.9.5 [load_best_model_at_end=true]: final model is checkpoint-20" in page
    assert "  - 0.9.10: no checkpoint-25 on disk" in page
    assert "| 0.9.3 | peft 0.18.1, transformers 5.6.0 | 3 | 1 |" in page


def test_runs_of_one_release_merge_into_one_column():
    """A full column and a later sweep cell of the same release: one column, the sweep's tests replacing the same
    node ids, the others kept."""
    full = _run("transformers", "5.23.0", [_t(SEED4, "failed", "old"), _t(MERGE, "passed")], fw="transformers")
    sweep = _run("transformers", "5.23.0", [_t(SEED4, "passed")], fw="transformers")
    src = _run("transformers", "5.23.0-src", [_t(SEED4, "failed", "from the tree")], fw="transformers")
    cols = status_columns([full, sweep, src])["transformers"]
    assert [c.label for c in cols] == ["5.23.0", "5.23.0-src"]  # a source cell sorts after the releases
    assert {t.scenario: t.outcome for t in cols[0].run.tests} == {SEED4: "passed", MERGE: "passed"}


def test_flips_compare_only_the_tests_both_releases_ran():
    """A smoke run of one parametrisation beside a full column of all: not a flip."""
    smoke = _run("axolotl", "0.20.0", [_t(MERGE, "passed", "", "cpu-none")], fw="axolotl")
    full = _run("axolotl", "0.21.0", [_t(MERGE, "passed", "", "cpu-none"), _t(MERGE, "failed", "0.00287", "cpu-nf4")],
                fw="axolotl")
    page = status_pages([smoke, full], "2026-12-07", {})["axolotl.md"]
    assert "first bad" not in page and f"| {MERGE} | pass | FAIL |" in page


def test_index_links_every_framework_and_single_release_says_so():
    pages = status_pages(RUNS, "2026-12-07", {})
    assert "| [ms-swift](ms-swift.md) | 4.6.0 | 1 |" in pages["README.md"]
    assert "(one release measured)" in pages["ms-swift.md"]


def test_cli_writes_pages_from_json_reports(tmp_path):
    report = tmp_path / "lf.json"
    report.write_text(json.dumps(document(RUNS)))
    out = tmp_path / "status"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "status", "--merge", str(report), "-o", str(out),
                           "--date", "2026-12-07"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "llamafactory.md", "ms-swift.md"]
    assert "Generated 2026-12-07" in (out / "llamafactory.md").read_text()
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps(document([RUNS[-1]])))
    nothing = subprocess.run([sys.executable, "-m", "harness.cli", "status", "--merge", str(empty), "-o",
                              str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert nothing.returncode == 1 and "names a framework version" in nothing.stderr
