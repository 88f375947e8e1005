"""``ft-harness sweep`` without building a real environment: version specs, pins, env cache, env-failure
cells, bisection with a fake runner, the GitHub matrix and the command line."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness import sweep
from harness.sweep import (EnvBuilder, IndexSettings, Probe, SweepError, bisect_releases, env_key, expand_versions,
                           filter_releases, first_meaningful_line, format_bisect, github_matrix, k_expression,
                           merge_runs, needs_release_list, scenario_command, select_pins, verdict_of)

REPO = Path(__file__).resolve().parent.parent

#: what an index lists for a framework: releases, post-releases, pre-releases, junk
RELEASES = ["2.6.1", "3.0.0", "3.0.1", "3.0.1.post1", "3.1.0", "3.1.1", "3.1.1.post1", "3.2.0", "3.2.0.post2",
            "3.2.1", "3.3.0rc1", "3.3.0", "3.3.0.post1", "3.4.0.dev0", "4.0.0b1", "4.0.0", "4.5.0.dev0", "4.6.0",
            "not-a-version"]


# ------------------------------------------------------------------------------------------- versions
def test_filter_drops_pre_and_folded_post_releases():
    assert filter_releases(RELEASES) == ["2.6.1", "3.0.0", "3.0.1", "3.1.0", "3.1.1", "3.2.0", "3.2.1", "3.3.0",
                                         "4.0.0", "4.6.0"]
    assert "3.3.0rc1" in filter_releases(RELEASES, pre=True)
    assert "4.5.0.dev0" in filter_releases(RELEASES, pre=True)
    assert "3.2.0.post2" in filter_releases(RELEASES, post=True)
    # a post-release whose base is not listed stays
    assert filter_releases(["1.0.0.post1", "1.1.0"]) == ["1.0.0.post1", "1.1.0"]


def test_range_expansion_inclusive_sorted():
    assert expand_versions("3.0.0..3.3.0", RELEASES) == ["3.0.0", "3.0.1", "3.1.0", "3.1.1", "3.2.0", "3.2.1",
                                                         "3.3.0"]
    assert expand_versions("3.2.0..", RELEASES) == ["3.2.0", "3.2.1", "3.3.0", "4.0.0", "4.6.0"]
    assert expand_versions("..3.0.1", RELEASES) == ["2.6.1", "3.0.0", "3.0.1"]
    assert expand_versions("3.1..3.2", RELEASES) == ["3.1.0", "3.1.1", "3.2.0"]  # 3.2 == 3.2.0


def test_explicit_latest_and_mixed_lists():
    assert expand_versions("latest", RELEASES) == ["4.6.0"]
    assert expand_versions("latest", RELEASES, pre=True) == ["4.6.0"]
    assert expand_versions("4.6.0, 3.1.1,latest,3.1.1", RELEASES) == ["3.1.1", "4.6.0"]  # sorted, unique
    assert expand_versions("3.2.0,3.0.0..3.0.1", RELEASES) == ["3.0.0", "3.0.1", "3.2.0"]
    # explicit versions are taken as given (no index needed), a pre-release included
    assert expand_versions("3.3.0rc1,3.1.1") == ["3.1.1", "3.3.0rc1"]


def test_pre_releases_only_with_pre():
    assert "3.3.0rc1" not in expand_versions("3.0.0..4.6.0", RELEASES)
    assert "4.0.0b1" not in expand_versions("3.0.0..4.6.0", RELEASES)
    with_pre = expand_versions("3.3.0rc1..4.0.0", RELEASES, pre=True)
    assert with_pre == ["3.3.0rc1", "3.3.0", "3.4.0.dev0", "4.0.0b1", "4.0.0"]
    assert expand_versions("latest", ["1.0", "2.0rc1"]) == ["1.0"]
    assert expand_versions("latest", ["1.0", "2.0rc1"], pre=True) == ["2.0rc1"]


@pytest.mark.parametrize("spec, releases, message", [
    ("", RELEASES, "empty"),
    ("3.3.0..3.0.0", RELEASES, "newer than"),
    ("5.0..6.0", RELEASES, "holds no release"),
    ("3.0.0..3.3.0", None, "release list"),
    ("latest", None, "release list"),
    ("latest", ["1.0rc1"], "no release"),
    ("3.x", RELEASES, "not a version"),
])
def test_bad_specs_are_clear_errors(spec, releases, message):
    with pytest.raises(SweepError, match=message):
        expand_versions(spec, releases)


def test_needs_release_list():
    assert not needs_release_list("3.1.1,3.2.0")
    assert needs_release_list("3.1.1,latest")
    assert needs_release_list("3.0.0..3.2.0")


# ------------------------------------------------------------------------------------------------ pins
def test_pins_swift_3x_4x_split():
    p30 = select_pins("ms-swift", "3.0.0")
    assert p30.no_deps and p30.harness_no_deps and "requirements/swift3.txt" in p30.requirements_files
    assert "transformers==4.47.1" in p30.overrides and "trl==0.11.4" in p30.overrides
    assert select_pins("ms-swift", "3.1.0").overrides == ("trl==0.14.0",)
    for v in ("3.1.1", "3.1.1.post1", "3.2.0", "3.2.0.post2", "3.4.1"):
        p = select_pins("ms-swift", v)
        assert p.no_deps and p.requirements_files == ("requirements/swift3.txt",), v
        assert not any(o.startswith("transformers") for o in p.overrides), v  # transformers 4.49 from swift3.txt
        assert p.adapter == "swift" and p.distribution == "ms-swift" and p.python == "3.11"
    assert not select_pins("ms-swift", "3.1.1").overrides
    assert select_pins("ms-swift", "3.2.0").overrides == ("trl==0.16.1",)
    assert select_pins("ms-swift", "3.4.1").overrides == ("trl==0.17.0",)
    assert "math-verify==0.5.2" in select_pins("ms-swift", "3.6.0").requirements
    for v in ("3.5.0", "3.12.6"):
        p = select_pins("ms-swift", v)
        assert p.no_deps and "trl==0.19.1" in p.overrides and "json-repair" in p.requirements, v
    for v in ("4.0.0", "4.6.0"):
        p = select_pins("ms-swift", v)
        assert not p.no_deps and not p.harness_no_deps and not p.requirements_files
        assert "msgspec" in p.requirements and "torch==2.13.0" in p.requirements
    assert select_pins("swift", "4.6.0").framework == "ms-swift"  # alias
    assert select_pins("MS_Swift", "4.6.0").framework == "ms-swift"  # normalised name


def test_pins_errors_and_overrides():
    with pytest.raises(SweepError, match="no pins cover"):
        select_pins("ms-swift", "2.6.1")
    with pytest.raises(SweepError, match="no pins for framework"):
        select_pins("torchtune", "0.6.1")
    with pytest.raises(SweepError, match="no pins cover"):
        select_pins("axolotl", "0.5.0")
    assert select_pins("axolotl", "0.21.0").python == "3.12" and "multiprocess==0.70.18" in select_pins(
        "axolotl", "0.21.0").requirements
    assert select_pins("axolotl", "0.19.0").python == "3.11"  # the index offers 0.19.0 and older to 3.11
    assert "multiprocess==0.70.18" in select_pins("axolotl", "0.19.0").requirements
    assert select_pins("ms-swift", "4.6.0", python="3.12").python == "3.12"
    lf = select_pins("llamafactory", "0.9.5")
    assert "torch==2.14.1" in lf.requirements and "torch==2.13.0" not in lf.requirements  # replaced by name
    assert select_pins("simpletuner", "4.10.1").python == "3.12"
    assert select_pins("transformers", "4.46.0").harness_no_deps
    assert "trl==0.12.2" in select_pins("transformers", "4.46.0").requirements
    assert {"trl==0.13.0", "peft==0.14.0", "datasets==3.2.0"} <= set(select_pins("transformers", "4.48.0").requirements)
    assert not select_pins("transformers", "5.23.0").harness_no_deps
    un = select_pins("unsloth", "2026.9.14")
    assert "unsloth_zoo<=2026.9.14" in un.requirements, "the companion as of the swept release ({version})"
    assert "torch==2.14.1" in un.requirements and un.adapter == "unsloth"


def test_llamafactory_pins():
    # 0.9.4/0.9.5 resolve beside ft-harness's ranges; 0.9.0-0.9.3 cap trl at 0.9.6: ft-harness --no-deps
    for v in ("0.9.4", "0.9.5"):
        p = select_pins("LLaMA-Factory", v)
        assert p.framework == "llamafactory" and not p.harness_no_deps and not p.no_deps, v
        assert p.overrides == ("torch==2.14.1",) and "torchvision==0.29.1" in p.requirements, v
    for v in ("0.9.0", "0.9.1", "0.9.2", "0.9.3"):
        p = select_pins("llamafactory", v)
        assert p.harness_no_deps and not p.no_deps, v
        assert "torch==2.14.1" in p.requirements and "torch==2.13.0" not in p.requirements, v
        assert "pyarrow<21" in p.requirements and "hypothesis>=6.100" in p.requirements, v
        assert ("transformers==4.45.2" in p.overrides) == (v == "0.9.1"), v  # 4.46's data_seed needs accelerate 1.1
    with pytest.raises(SweepError, match="no pins cover"):
        select_pins("llamafactory", "0.8.3")


def test_pins_from_a_custom_table():
    table = {"fw": {"distribution": "fw-dist", "adapter": "fwad", "ranges": [
        {"versions": ">=1,<2", "adapter_options": {"mode": "x"}, "requirements": ["a==1"]}]}}
    p = select_pins("fw", "1.5", table=table, defaults={"python": "3.10", "requirements": ["torch==2.13.0"]})
    assert (p.distribution, p.python, p.requirements) == ("fw-dist", "3.10", ("torch==2.13.0", "a==1"))
    assert p.adapter_spec() == "fwad[mode=x]"
    assert p.adapter_spec({"mode": "y", "k": "v"}) == "fwad[mode=y,k=v]"


def test_every_pins_entry_is_well_formed():
    from packaging.specifiers import SpecifierSet

    from harness.sweep.pins import PINS

    for name, entry in PINS.items():
        assert entry["adapter"] and entry["distribution"], name
        for rng in entry["ranges"]:
            SpecifierSet(rng["versions"])
            for f in rng.get("requirements_files", ()):
                assert (REPO / f).is_file(), f


# --------------------------------------------------------------------------------------- env cache key
def test_env_key_stable_and_sensitive(tmp_path):
    (tmp_path / "requirements").mkdir()
    req = tmp_path / "requirements" / "swift3.txt"
    req.write_text("transformers==4.49.0\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    p = select_pins("ms-swift", "3.1.1")
    idx = IndexSettings(find_links=("/opt/wheels",))
    k1 = env_key(p, idx, tmp_path)
    assert k1 == env_key(select_pins("ms-swift", "3.1.1"), IndexSettings(find_links=("/opt/wheels",)), tmp_path)
    assert len(k1) == 16 and int(k1, 16) >= 0
    # same key in a fresh interpreter (no hash randomisation in it)
    code = ("from pathlib import Path; from harness.sweep import *; "
            f"print(env_key(select_pins('ms-swift', '3.1.1'), IndexSettings(find_links=('/opt/wheels',)), "
            f"Path({str(tmp_path)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == k1, out.stderr
    # adapter options and notes do not change the environment
    import dataclasses
    assert env_key(dataclasses.replace(p, adapter_options={"load_args": "true"}, note="x"), idx, tmp_path) == k1
    assert env_key(select_pins("ms-swift", "3.2.0"), idx, tmp_path) != k1
    assert env_key(p, IndexSettings(), tmp_path) != k1
    req.write_text("transformers==4.49.1\n")
    assert env_key(p, idx, tmp_path) != k1  # a pin edited in the requirements file
    assert sweep.env_name(p, k1) == f"ms-swift-3.1.1-{k1[:12]}"


def test_index_settings_from_pip_config_and_uv_args(tmp_path):
    cons = tmp_path / "constraints.txt"
    cons.write_text("torch<=2.14.1\n")
    idx = IndexSettings.from_pip_config({"find-links": "/opt/wheels", "constraint": str(cons),
                                         "extra-index-url": "file:///opt/pypi/simple file:///opt/pypi-more/simple"})
    args = idx.uv_args()
    assert args[args.index("--find-links") + 1] == "/opt/wheels"
    assert args[args.index("--constraints") + 1] == str(cons)
    assert args.count("--extra-index-url") == 2 and "unsafe-best-match" in args
    assert "--index-url" not in args


# --------------------------------------------------------------------------------- environments (fake uv)
FAKE_UV = r"""#!/bin/sh
# a stand-in for uv: logs its calls; 'venv' makes the directory; 'pip install' fails when asked to
echo "$@" >> "$FAKE_UV_LOG"
if [ "$1" = "venv" ]; then
  for a in "$@"; do last="$a"; done
  mkdir -p "$last/bin"; exit 0
fi
case "$*" in
  *"$FAKE_UV_FAIL"*)
    echo "Using Python 3.11.7 environment at: /x" >&2
    echo "  × No solution found when resolving dependencies:" >&2
    echo "  ╰─▶ Because there is no version of transformers==9.9.9 and you require transformers==9.9.9, we can conclude that your requirements are unsatisfiable." >&2
    exit 1;;
esac
exit 0
"""


@pytest.fixture
def fake_uv(tmp_path, monkeypatch):
    uv = tmp_path / "uv"
    uv.write_text(FAKE_UV)
    uv.chmod(uv.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "uv-calls.log"
    monkeypatch.setenv("FAKE_UV_LOG", str(log))
    monkeypatch.setenv("FAKE_UV_FAIL", "never-matches-anything")
    return uv, log


def _builder(tmp_path, uv, **kw):
    return EnvBuilder(tmp_path / "envs", REPO, IndexSettings(find_links=("/opt/wheels",)), uv=str(uv),
                      log_dir=tmp_path / "logs", **kw)


def test_env_built_once_then_reused_without_uv(tmp_path, fake_uv):
    uv, log = fake_uv
    b = _builder(tmp_path, uv)
    pins = select_pins("ms-swift", "3.1.1")
    first = b.ensure(pins)
    assert first.ok and not first.cached, first.reason
    calls = log.read_text().splitlines()
    assert calls[0].startswith("venv --no-project --python 3.11")
    assert any("--no-deps ms-swift==3.1.1" in c for c in calls)
    assert any("-r" in c and "swift3.txt" in c and "--find-links /opt/wheels" in c for c in calls)
    assert (first.path / ".ft-sweep-complete.json").is_file()
    again = _builder(tmp_path, uv).ensure(pins)  # a second sweep: nothing resolved, nothing downloaded
    assert again.ok and again.cached and again.path == first.path
    assert log.read_text().splitlines() == calls  # uv was not called again


def test_incomplete_env_is_rebuilt(tmp_path, fake_uv):
    uv, log = fake_uv
    b = _builder(tmp_path, uv)
    pins = select_pins("ms-swift", "4.6.0")
    path = b.path_for(pins)
    (path / "bin").mkdir(parents=True)  # a build that died half-way: no marker
    (path / "junk").write_text("x")
    res = b.ensure(pins)
    assert res.ok and not res.cached and not (path / "junk").exists()
    assert any("ms-swift==4.6.0" in c and str(REPO) in c for c in log.read_text().splitlines())


def test_env_failure_is_a_reason_not_a_crash(tmp_path, fake_uv, monkeypatch):
    uv, _ = fake_uv
    monkeypatch.setenv("FAKE_UV_FAIL", "swift3.txt")
    res = _builder(tmp_path, uv).ensure(select_pins("ms-swift", "3.2.0"))
    assert not res.ok
    assert res.reason.startswith("No solution found when resolving dependencies: Because there is no version of "
                                 "transformers==9.9.9")
    assert not (res.path / ".ft-sweep-complete.json").exists()


def test_env_failure_cell_in_the_merged_matrix(tmp_path, fake_uv, monkeypatch):
    from harness.html_report import render_html
    from harness.report import AdapterRun
    from harness.report import TestOutcome as Outcome

    uv, _ = fake_uv
    monkeypatch.setenv("FAKE_UV_FAIL", "swift3.txt")
    out = tmp_path / "out"
    out.mkdir()
    b = _builder(tmp_path, uv)
    failed = sweep.run_version(b, select_pins("ms-swift", "3.2.0"), out, k_expr="args", log=lambda m: None)
    assert failed.error.startswith("env: No solution found") and failed.report is None
    per_version = json.loads((out / "ms-swift-3.2.0.json").read_text())  # CI's report --merge still sees it
    assert per_version["format"] == "ft-harness-report/1"
    assert per_version["adapters"][0]["tests"][0]["reason"].startswith("env: ")
    good = tmp_path / "good.json"
    from harness.report import render

    good.write_text(render([AdapterRun("swift", "swift 3.1.1", {}, 1, 3.0, [
        Outcome("a.py::t1", "a.py::t1", "failed", "boom", 1.0, "000"),
        Outcome("b.py::t2", "b.py::t2", "passed", "", 2.0, "001")], {"ms-swift": "3.1.1"})], "json"))
    ok = sweep.VersionResult("3.1.1", select_pins("ms-swift", "3.1.1"), "swift", report=good)
    data = sweep.write_matrix([ok, failed], out, "ms-swift", extra={"wall_s": 1.0, "timings": {}})
    rows = {s["id"]: s for s in data["scenarios"]}
    assert set(rows) == {"a.py::t1", "b.py::t2"}
    assert rows["a.py::t1"]["results"]["swift@3.2.0"]["reason"].startswith("env: No solution")
    assert rows["b.py::t2"]["seed"] == "001"
    md = (out / "ms-swift-sweep.md").read_text()
    assert "| scenario | seed | 3.1.1 | 3.2.0 |" in md and "env: No solution found" in md
    assert 'class="c c-env"' in (out / "ms-swift-sweep.html").read_text()
    assert 'class="c c-env"' in render_html(data)


def test_library_sweep_headers_name_the_swept_library(tmp_path):
    """A sweep of a library under another framework's adapter (TRL under plain transformers) heads each column with the
    swept library's version, not the framework's (which is the same in every column)."""
    from harness.report import AdapterRun, render
    from harness.report import TestOutcome as Outcome

    results = []
    for trl in ("1.14.2", "1.15.0"):
        report = tmp_path / f"trl-{trl}.json"
        report.write_text(render([AdapterRun("transformers", "transformers", {}, 0, 1.0, [
            Outcome("a.py::t1", "a.py::t1", "passed", "", 1.0, "ref")],
            {"transformers": "5.23.0", "trl": trl, "peft": "0.21.2"})], "json"))
        results.append(sweep.VersionResult(trl, select_pins("trl", trl), "transformers", report=report))
    data = sweep.write_matrix(results, tmp_path, "trl", extra={"wall_s": 1.0, "timings": {}, "distribution": "trl"})
    assert "| scenario | seed | 1.14.2 | 1.15.0 |" in (tmp_path / "trl-sweep.md").read_text()
    assert data["sweep"]["distribution"] == "trl"


def test_merge_runs_expands_environment_rows():
    from harness.report import AdapterRun
    from harness.report import TestOutcome as Outcome

    env = AdapterRun("swift", "swift", {}, 3, 0.0, [Outcome("<environment>", "<environment>", "error",
                                                                "env: x", 0.0, None)], {"ms-swift": "3.0.0"})
    alone = merge_runs([env])
    assert [t.scenario for t in alone[0].tests] == ["<environment>"]
    ok = AdapterRun("swift", "swift", {}, 0, 1.0, [Outcome("m.py::f[1]", "m.py::f", "passed", "", 1.0, "004")],
                    {"ms-swift": "3.1.1"})
    merged = merge_runs([ok, env])
    assert [(t.scenario, t.outcome, t.reason, t.seed) for t in merged[1].tests] == [("m.py::f", "error", "env: x", "004")]


def test_first_meaningful_line():
    assert first_meaningful_line("Using CPython 3.11\nResolved 3 packages\nerror: Failed to fetch `https://x`\n"
                                 "  Caused by: connection refused") == \
        "error: Failed to fetch `https://x`: connection refused"
    assert first_meaningful_line("\x1b[31mERROR: No matching distribution found for foo==9\x1b[0m") == \
        "ERROR: No matching distribution found for foo==9"
    piped = ("Using Python 3.11.7 environment at: env\nerror: No solution found when resolving dependencies\n"
             "  cause: Because trl==0.12.2 depends on transformers<4.47.0 and you require transformers==4.48.0, we\n")
    assert first_meaningful_line(piped).startswith(
        "error: No solution found when resolving dependencies: Because trl==0.12.2 depends on transformers<4.47.0")
    assert first_meaningful_line("") == "no error output"
    assert len(first_meaningful_line("error: " + "x" * 500)) == 200


# ---------------------------------------------------------------------------------------------- running
def test_scenario_command_is_one_function():
    cmd = scenario_command(Path("/envs/e"), "swift[load_args=true]", Path("/out/ms-swift-3.1.1.json"),
                           k_expression(["args_precedence", "grpo_full_save"]), ["-x"])
    assert cmd == ["/envs/e/bin/ft-harness", "report", "--adapter", "swift[load_args=true]", "--format", "json",
                   "-o", "/out/ms-swift-3.1.1.json", "--", "-k", "(args_precedence) or (grpo_full_save)", "-x"]
    assert scenario_command(Path("/e"), "swift", Path("/o.json"))[-1] == "/o.json"
    assert k_expression([]) is None and k_expression(["a"]) == "a"


def _report(outcome, reason="", sid="test_args_precedence.py::test_seed_lora_on_full_output_trains_lora"):
    return {"format": "ft-harness-report/1", "adapters": [],
            "scenarios": [{"id": sid, "seed": "000", "results": {"swift": {"outcome": outcome, "reason": reason}}}]}


@pytest.mark.parametrize("outcome, reason, verdict", [
    ("passed", "", "pass"), ("failed", "boom", "fail"), ("error", "crash", "skip"), ("xfailed", "known", "fail"),
    ("xpassed", "fixed", "pass"), ("skipped", "no grpo", "skip"), ("error", "env: no solution", "skip"),
])
def test_verdicts(outcome, reason, verdict):
    assert verdict_of(_report(outcome, reason), "test_seed_lora_on_full_output_trains_lora")[0] == verdict
    assert verdict_of(_report(outcome, reason), "test_args_precedence.py::test_seed_lora_on_full_output_trains_lora"
                      )[0] == verdict


def test_verdict_missing_scenario_or_report():
    assert verdict_of(_report("passed"), "no_such_test")[0] == "skip"
    assert verdict_of(None, "x")[0] == "skip"


# ------------------------------------------------------------------------------------------------ bisect
VERSIONS = [f"3.{i}.0" for i in range(40)]  # 3.0.0 .. 3.39.0


class FakeRunner:
    """verdict by release index: fail before ``flip`` and pass from it (a fix), or the reverse;
    ``skips`` are env errors."""

    def __init__(self, flip, fixed=True, skips=()):
        self.flip, self.fixed, self.skips, self.calls = flip, fixed, set(skips), []

    def __call__(self, v):
        self.calls.append(v)
        if v in self.skips:
            return Probe(v, "skip", "env: broken wheel")
        after = VERSIONS.index(v) >= VERSIONS.index(self.flip)
        return Probe(v, "pass" if after == self.fixed else "fail", "x")


@pytest.mark.parametrize("flip", ["3.1.0", "3.2.0", "3.17.0", "3.39.0"])
def test_bisect_finds_first_fixed_release_in_log_probes(flip):
    runner = FakeRunner(flip)
    res = bisect_releases(list(reversed(VERSIONS)), good="3.39.0", bad="3.0.0", probe=runner)
    assert res.kind == "fix" and res.first == flip and not res.ambiguous
    assert res.last_before == VERSIONS[VERSIONS.index(flip) - 1]
    assert len(runner.calls) == len(set(runner.calls))  # nothing probed twice
    assert len(runner.calls) <= math.ceil(math.log2(len(VERSIONS))) + 2
    text = format_bisect(res, "ms-swift")
    assert f"first fixed release: ms-swift {flip} (pass)" in text
    assert f"before: {res.last_before} (fail)" in text


def test_bisect_regression_direction():
    runner = FakeRunner("3.25.0", fixed=False)
    res = bisect_releases(VERSIONS, good="3.3.0", bad="3.30.0", probe=runner)
    assert res.kind == "regression" and res.first == "3.25.0" and res.last_before == "3.24.0"
    assert res.releases[0] == "3.3.0" and res.releases[-1] == "3.30.0"  # only between the endpoints
    assert all(VERSIONS.index("3.3.0") <= VERSIONS.index(v) <= VERSIONS.index("3.30.0") for v in runner.calls)
    assert "first bad release (regression): 3.25.0" in format_bisect(res)
    assert res.neighbours() == ("3.24.0", "3.26.0")


def test_bisect_skips_env_errors_like_git_bisect_skip():
    runner = FakeRunner("3.20.0", skips={"3.19.0", "3.20.0", "3.21.0", "3.10.0"})
    res = bisect_releases(VERSIONS, good="3.39.0", bad="3.0.0", probe=runner)
    assert res.first in ("3.20.0", "3.22.0")
    assert {"3.19.0", "3.20.0", "3.21.0"} & set(runner.calls)  # it tried them and went around
    assert res.ambiguous and set(res.candidates) <= {"3.19.0", "3.20.0", "3.21.0", "3.22.0"}
    assert "one of" in format_bisect(res)
    assert any(p.verdict == "skip" and p.detail.startswith("env:") for p in res.probes)
    # a skipped release away from the flip does not make the answer ambiguous
    runner = FakeRunner("3.30.0", skips={"3.19.0", "3.20.0"})
    res = bisect_releases(VERSIONS, good="3.39.0", bad="3.0.0", probe=runner)
    assert res.first == "3.30.0" and not res.ambiguous


def test_bisect_crosses_a_block_of_untestable_releases_in_log_probes():
    block = {f"3.{i}.0" for i in range(8, 32)}  # 24 releases that do not install / import
    runner = FakeRunner("3.35.0", skips=block)
    res = bisect_releases(VERSIONS, good="3.39.0", bad="3.0.0", probe=runner)
    assert res.first == "3.35.0" and not res.ambiguous
    assert len(runner.calls) <= 2 + 2 * math.ceil(math.log2(len(block))) + math.ceil(math.log2(len(VERSIONS)))
    runner = FakeRunner("3.20.0", skips=block)  # the flip inside the block: the answer is the block's range
    res = bisect_releases(VERSIONS, good="3.39.0", bad="3.0.0", probe=runner)
    assert res.ambiguous and res.last_before == "3.7.0" and res.first == "3.32.0"
    assert len(runner.calls) < len(VERSIONS)


def test_bisect_rejects_reversed_equal_and_untestable_endpoints():
    with pytest.raises(SweepError, match="reversed.*swap them: --good 3.39.0 --bad 3.0.0"):
        bisect_releases(VERSIONS, good="3.0.0", bad="3.39.0", probe=FakeRunner("3.5.0"))
    with pytest.raises(SweepError, match="both pass.*does not flip"):
        bisect_releases(VERSIONS, good="3.10.0", bad="3.39.0", probe=FakeRunner("3.5.0"))
    with pytest.raises(SweepError, match="same release"):
        bisect_releases(VERSIONS, good="3.1.0", bad="3.1.0", probe=FakeRunner("3.5.0"))
    with pytest.raises(SweepError, match="not among the releases"):
        bisect_releases(VERSIONS, good="9.9.9", bad="3.1.0", probe=FakeRunner("3.5.0"))
    with pytest.raises(SweepError, match="could not be tested"):
        bisect_releases(VERSIONS, good="3.39.0", bad="3.0.0", probe=FakeRunner("3.5.0", skips={"3.0.0"}))


def test_bisect_adjacent_endpoints_need_no_more_probes():
    runner = FakeRunner("3.6.0")
    res = bisect_releases(VERSIONS, good="3.6.0", bad="3.5.0", probe=runner)
    assert res.first == "3.6.0" and len(runner.calls) == 2


# ------------------------------------------------------------------------------------ matrix / command line
def test_github_matrix_shape():
    m = github_matrix("swift", ["3.1.1", "4.6.0"], options={"load_args": "true"})
    assert m == {"include": [
        {"framework": "ms-swift", "version": "3.1.1", "python": "3.11", "adapter": "swift[load_args=true]"},
        {"framework": "ms-swift", "version": "4.6.0", "python": "3.11", "adapter": "swift[load_args=true]"}]}


def _sweep_cli(*args):
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "harness.sweep", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=env)


def test_cli_emit_matrix_github_builds_nothing(tmp_path):
    res = _sweep_cli("ms-swift", "--versions", "4.6.0,3.1.1", "--emit-matrix", "github", "--no-pip-config",
                     "--env-dir", str(tmp_path / "envs"))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [(e["version"], e["adapter"]) for e in data["include"]] == [("3.1.1", "swift"), ("4.6.0", "swift")]
    assert len(res.stdout.strip().splitlines()) == 1  # one line: fits $GITHUB_OUTPUT
    assert not (tmp_path / "envs").exists()


def test_cli_help_and_usage_errors():
    res = _sweep_cli("--help")
    assert res.returncode == 0
    for word in ("--versions SPEC", "--bisect SCENARIO", "--good V", "--emit-matrix {github}", "--jobs N",
                 "3.0.0..3.3.0", "examples:", "env: <reason>", "--harness-source"):
        assert word in res.stdout, word
    assert "--versions SPEC is required" in _sweep_cli("ms-swift").stderr
    assert "--bisect needs --good" in _sweep_cli("ms-swift", "--bisect", "x").stderr
    bad = _sweep_cli("torchtune", "--versions", "1.0", "--emit-matrix", "github", "--no-pip-config")
    assert bad.returncode == 2 and "no pins for framework 'torchtune'" in bad.stderr


def test_add_parser_registers_sweep_on_a_cli():
    import argparse

    p = argparse.ArgumentParser(prog="ft-harness")
    sub = p.add_subparsers(dest="command")
    sweep.add_parser(sub)
    args = p.parse_args(["sweep", "swift", "--versions", "3.1.1..3.2.0", "--scenario", "a", "--scenario", "b",
                         "--adapter-option", "load_args=true", "--jobs", "2", "--pytest-args", "-m 'not gpu'"])
    assert (args.framework, args.versions, args.scenario, args.jobs) == ("swift", "3.1.1..3.2.0", ["a", "b"], 2)
    assert args.func is sweep.main


def test_show_pins_builds_nothing(tmp_path):
    res = _sweep_cli("ms-swift", "--versions", "3.0.0,4.6.0", "--show-pins", "--no-pip-config",
                     "--env-dir", str(tmp_path / "envs"))
    assert res.returncode == 0, res.stderr
    assert "transformers==4.47.1" in res.stdout and "msgspec" in res.stdout
    assert not (tmp_path / "envs").exists()


def _source_tree(root: Path, version: str = "5.25.0.dev0") -> Path:
    """A framework checkout as far as the sweep reads it: a setup.py declaring its version, a package."""
    tree = root / "transformers"
    (tree / "src" / "transformers").mkdir(parents=True)
    (tree / "setup.py").write_text(f'setup(\n    name="transformers",\n    version="{version}",\n)\n')
    (tree / "src" / "transformers" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    return tree


def test_source_version_of_trees_and_sdists(tmp_path):
    from harness.sweep import source_version

    assert source_version(_source_tree(tmp_path)) == "5.25.0.dev0"
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[build-system]\nrequires = []\n\n[project]\nname = "x"\nversion = "0.9.6.dev0"\n')
    assert source_version(proj) == "0.9.6.dev0"
    sdist = tmp_path / "llamafactory-0.9.6.dev0.tar.gz"
    sdist.write_bytes(b"")
    assert source_version(sdist) == "0.9.6.dev0"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SweepError, match="no version in pyproject.toml"):
        source_version(empty)


def test_source_cell_installs_the_tree_and_rebuilds_when_it_changes(tmp_path, fake_uv):
    """A cell from a local checkout (no git host is needed): the tree is installed instead of the release, the env is
    its own, and an edit in the tree makes a new one; --with installs a library tree over what resolved."""
    uv, log = fake_uv
    tree = _source_tree(tmp_path)
    release = select_pins("transformers", "5.23.0")
    src = dataclasses.replace(select_pins("transformers", "5.25.0.dev0"), source=str(tree))
    assert src.cell == "5.25.0.dev0-src" and env_key(release) != env_key(src)
    res = _builder(tmp_path, uv).ensure(src)
    assert res.ok, res.reason
    calls = log.read_text().splitlines()
    assert any(str(tree) in c and "transformers==" not in c for c in calls), calls
    assert "5.25.0.dev0-src" in res.path.name
    key = env_key(src)
    (tree / "src" / "transformers" / "trainer.py").write_text("# a new file in the checkout\n")
    assert env_key(src) != key, "an edited tree keys a new environment"
    lib = tmp_path / "peft-main"
    lib.mkdir()
    over = dataclasses.replace(release, with_sources=(("peft", str(lib)),))
    assert over.cell == "5.23.0-with-peft"
    assert _builder(tmp_path, uv).ensure(over).ok
    assert log.read_text().splitlines()[-1].endswith(f"--no-deps --reinstall {lib}")


def test_a_source_cell_names_itself_in_its_report(tmp_path):
    from harness.sweep.runs import _label_cell

    report = tmp_path / "r.json"
    report.write_text(json.dumps({"format": "ft-harness-report/1", "adapters": [
        {"target": "transformers", "versions": {"transformers": "5.23.0", "peft": "0.21.2"}, "tests": []}]}))
    src = dataclasses.replace(select_pins("transformers", "5.23.0"), source=str(tmp_path))
    _label_cell(report, src)
    assert json.loads(report.read_text())["adapters"][0]["versions"] == {"transformers": "5.23.0-src",
                                                                        "peft": "0.21.2"}
    release = tmp_path / "release.json"
    release.write_text(report.read_text().replace("5.23.0-src", "5.23.0"))
    before = release.read_text()
    _label_cell(release, select_pins("transformers", "5.23.0"))
    assert release.read_text() == before, "a release cell's report is left as pytest wrote it"


def test_min_versions_cell_takes_the_declared_requirements_at_their_floors(tmp_path, fake_uv, monkeypatch):
    """--min-versions: the framework alone first, its Requires-Dist read from the env, then all of it resolved with
    uv --resolution lowest-direct; a --no-deps framework has no floors to take (a reason, not a crash)."""
    import harness.sweep.envs as envs

    uv, log = fake_uv
    seen = []
    monkeypatch.setattr(envs, "declared_requirements",
                        lambda env, dist: seen.append(dist) or ["transformers>=4.45.0,<=5.6.0", "peft>=0.14"])
    floor = dataclasses.replace(select_pins("llamafactory", "0.9.5"), min_versions=True)
    assert floor.cell == "0.9.5-min" and env_key(floor) != env_key(select_pins("llamafactory", "0.9.5"))
    assert _builder(tmp_path, uv).ensure(floor).ok and seen == ["llamafactory"]
    calls = log.read_text().splitlines()
    assert any(c.endswith("--no-deps llamafactory==0.9.5") for c in calls)
    resolve = next(c for c in calls if "lowest-direct" in c)
    assert "--resolution lowest-direct llamafactory==0.9.5 transformers>=4.45.0,<=5.6.0 peft>=0.14" in resolve
    no_deps = dataclasses.replace(select_pins("ms-swift", "3.1.1"), min_versions=True)
    res = _builder(tmp_path, uv).ensure(no_deps)
    assert not res.ok and "no declared floors" in res.reason


def test_declared_requirements_reads_the_installed_metadata(tmp_path):
    from harness.sweep import declared_requirements

    info = tmp_path / "lib" / "python3.12" / "site-packages" / "LLaMA_Factory-0.9.5.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llamafactory\nVersion: 0.9.5\n"
                                   "Requires-Dist: transformers<=5.6.0,>=4.45.0\n"
                                   "Requires-Dist: torch>=2.0.0; extra == \"torch\"\n"
                                   "Requires-Dist: tomli; python_version < \"3.11\"\n"
                                   "Requires-Dist: peft>=0.14.0\n\n")
    assert declared_requirements(tmp_path, "llama-factory") == ["transformers<=5.6.0,>=4.45.0", "peft>=0.14.0"]


def test_cli_source_cell_show_pins(tmp_path):
    tree = _source_tree(tmp_path)
    res = _sweep_cli("transformers", "--source", str(tree), "--show-pins", "--no-pip-config",
                     "--env-dir", str(tmp_path / "envs"))
    assert res.returncode == 0, res.stderr
    assert "transformers 5.25.0.dev0-src:" in res.stdout and f"framework from: {tree}" in res.stdout
    bad = _sweep_cli("transformers", "--versions", "5.23.0", "--with", "peft", "--show-pins", "--no-pip-config")
    assert bad.returncode == 2 and "expected NAME=PATH" in bad.stderr


def test_github_workflow_example():
    text = (REPO / "examples" / "github-sweep.yml").read_text()
    assert "--emit-matrix github" in text and "fromJSON" in text and "upload-artifact" in text
    assert "report" in text and "--merge" in text and "--format html" in text
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load(text)
    assert {"plan", "sweep", "merge"} <= set(wf["jobs"])
    assert "fromJSON" in str(wf["jobs"]["sweep"]["strategy"]["matrix"])


FAKE_FT_HARNESS = r'''#!{python}
# a stand-in for <env>/bin/ft-harness: writes a one-scenario report where -o says, records argv and cwd
import json, os, sys
argv = sys.argv[1:]
out = argv[argv.index("-o") + 1]
open(os.path.join(os.path.dirname(out), "argv.json"), "w").write(json.dumps({{"argv": argv, "cwd": os.getcwd(),
    "hub": os.environ.get("HF_HUB_OFFLINE"), "venv": os.environ.get("VIRTUAL_ENV")}}))
sys.path.insert(0, {repo!r})
from harness.report import AdapterRun, TestOutcome, render
t = TestOutcome("scenarios/test_a.py::test_b", "test_a.py::test_b", "failed", "boom", 0.1, "000")
open(out, "w").write(render([AdapterRun("swift", "swift", {{}}, 1, 0.1, [t], {{"ms-swift": "3.1.1"}})], "json"))
sys.exit(1)
'''


def test_run_version_runs_the_env_command_in_a_neutral_dir(tmp_path, fake_uv):
    uv, _ = fake_uv
    b = _builder(tmp_path, uv)
    pins = select_pins("ms-swift", "3.1.1")
    env = b.ensure(pins)
    script = env.path / "bin" / "ft-harness"
    script.write_text(FAKE_FT_HARNESS.format(python=sys.executable, repo=str(REPO)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    res = sweep.run_version(b, pins, out, options={"load_args": "true"}, k_expr="args", log=lambda m: None)
    assert res.error is None and res.exit_code == 1 and res.report == out / "ms-swift-3.1.1.json"
    seen = json.loads((out / "argv.json").read_text())
    assert seen["argv"][:4] == ["report", "--adapter", "swift[load_args=true]", "--format"]
    assert seen["argv"][-2:] == ["-k", "args"] and seen["hub"] == "1" and seen["venv"] == str(env.path)
    assert Path(seen["cwd"]) == out / ".work" / "ms-swift-3.1.1"
    assert verdict_of(json.loads(res.report.read_text()), "test_b")[0] == "fail"
    script.write_text("#!/bin/sh\necho 'Traceback...' ; echo 'ModuleNotFoundError: No module named swift' ; exit 3\n")
    broken = sweep.run_version(b, pins, out, k_expr="args", log=lambda m: None)
    assert broken.error == "run: exit 3: ModuleNotFoundError: No module named swift"
    assert json.loads((out / "ms-swift-3.1.1.json").read_text())["adapters"][0]["tests"][0]["reason"].startswith("run:")


def test_run_failure_line_finds_the_exception():
    log = ("INTERNALERROR> Traceback (most recent call last):\nINTERNALERROR>   File \"x\", line 1\n"
           "INTERNALERROR>     import json_repair\nINTERNALERROR> ModuleNotFoundError: No module named 'json_repair'\n"
           "\nft-harness: wrote json report for 1 adapter(s) to /x.json\n")
    assert sweep.run_failure_line(log) == "ModuleNotFoundError: No module named 'json_repair'"
    assert sweep.run_failure_line("E   ImportError: cannot import name 'X' from 'transformers'") == \
        "ImportError: cannot import name 'X' from 'transformers'"
    assert sweep.run_failure_line("nothing here\n") == "nothing here"


def _broken_run(env, printed: str, adapter: dict) -> None:
    """<env>/bin/ft-harness that prints ``printed``, writes a report holding ``adapter`` to its ``-o`` file and
    exits 3: a run that broke after writing a report."""
    report = json.dumps({"format": "ft-harness-report/1", "adapters": [adapter], "scenarios": []})
    script = env.path / "bin" / "ft-harness"
    script.write_text(f"#!/bin/sh\necho {shlex.quote(printed)}\n"
                      "for a; do if [ \"$prev\" = -o ]; then out=$a; fi; prev=$a; done\n"
                      f"printf '%s' {shlex.quote(report)} > \"$out\"\nexit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_a_report_without_tests_and_a_bad_exit_is_a_run_error(tmp_path, fake_uv):
    uv, _ = fake_uv
    b = _builder(tmp_path, uv)
    pins = select_pins("ms-swift", "3.10.2")
    env = b.ensure(pins)
    _broken_run(env, "INTERNALERROR> ModuleNotFoundError: No module named 'json_repair'",
                {"target": "swift", "name": "swift", "exit_code": 3, "duration_s": 0, "tests": []})
    res = sweep.run_version(b, pins, tmp_path / "out", k_expr="x", log=lambda m: None)
    assert res.report is None
    assert res.error == "run: exit 3: ModuleNotFoundError: No module named 'json_repair'"


def test_a_report_with_only_a_session_error_is_a_run_error(tmp_path, fake_uv):
    # pytest's INTERNALERROR at collection (the framework does not import): the report holds one
    # <session> row and no version; the cell must be the version's own "run: ..." (LLaMA-Factory 0.9.0)
    uv, _ = fake_uv
    b = _builder(tmp_path, uv)
    pins = select_pins("llamafactory", "0.9.0")
    env = b.ensure(pins)
    _broken_run(env, "INTERNALERROR> ImportError: pyarrow requires NumPy 2.0 or newer, found 1.26.4",
                {"target": "llamafactory", "name": "llamafactory", "exit_code": 3, "duration_s": 0, "versions": {},
                 "tests": [{"nodeid": "<session>", "scenario": "<session>", "outcome": "error",
                            "reason": "pytest exited with 3", "duration_s": 0, "seed": None}]})
    out = tmp_path / "out"
    res = sweep.run_version(b, pins, out, k_expr="x", log=lambda m: None)
    assert res.report is None
    assert res.error == "run: exit 3: ImportError: pyarrow requires NumPy 2.0 or newer, found 1.26.4"
    per_version = json.loads((out / "llamafactory-0.9.0.json").read_text())
    assert per_version["adapters"][0]["versions"] == {"llamafactory": "0.9.0"}  # the column names the release



FAKE_ENV_TOOL = r'''#!{python}
# <env>/bin/ft-harness made by the fake uv: the seed-000 scenario fails before 3.2.0 and passes from it
import json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from packaging.version import Version
from harness.report import AdapterRun, TestOutcome, render
argv = sys.argv[1:]
version = Path(sys.argv[0]).resolve().parent.parent.name.split("-")[2]
bad = Version(version) < Version("3.2.0")
tests = [TestOutcome("scenarios/test_args_precedence.py::test_seed_lora_on_full_output_trains_lora[cpu]",
                     "test_args_precedence.py::test_seed_lora_on_full_output_trains_lora",
                     "failed" if bad else "passed", "trained full" if bad else "", 0.1, "000")]
run = AdapterRun(argv[argv.index("--adapter") + 1], "swift", {{}}, int(bad), 0.1, tests, {{"ms-swift": version}})
Path(argv[argv.index("-o") + 1]).write_text(render([run], "json"))
sys.exit(int(bad))
'''


@pytest.fixture
def fake_world(tmp_path, fake_uv):
    """A fake uv whose envs get a fake ft-harness: the whole sweep command runs without network."""
    uv, log = fake_uv
    tool = tmp_path / "ft-harness-tool"
    tool.write_text(FAKE_ENV_TOOL.format(python=sys.executable, repo=str(REPO)))
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    uv.write_text(FAKE_UV.replace('mkdir -p "$last/bin"; exit 0',
                                  f'mkdir -p "$last/bin"; cp {tool} "$last/bin/ft-harness"; exit 0'))
    return uv, log


def _cli_in(tmp_path, uv, *args):
    return sweep.main(["--uv", str(uv), "--env-dir", str(tmp_path / "envs"), "--no-pip-config",
                       "--harness-source", str(REPO), "--out", str(tmp_path / "out"), *args])


def test_sweep_command_end_to_end_with_jobs(tmp_path, fake_world, monkeypatch, capsys):
    uv, log = fake_world
    monkeypatch.setenv("FAKE_UV_FAIL", "ms-swift==3.0.0")  # one release's environment cannot be built
    code = _cli_in(tmp_path, uv, "ms-swift", "--versions", "3.0.0,3.1.1,3.2.0,4.6.0", "--jobs", "2",
                   "--scenario", "seed_lora")
    assert code == 1  # red cells
    out = tmp_path / "out"
    data = json.loads((out / "ms-swift-sweep.json").read_text())
    row = data["scenarios"][0]["results"]
    assert [row[f"swift@{v}"]["outcome"] for v in ("3.1.1", "3.2.0", "4.6.0")] == ["failed", "passed", "passed"]
    assert row["swift@3.0.0"]["reason"].startswith("env: No solution found")
    assert data["sweep"]["jobs"] == 2 and set(data["sweep"]["timings"]) == {"3.0.0", "3.1.1", "3.2.0", "4.6.0"}
    md = (out / "ms-swift-sweep.md").read_text()
    assert "| scenario | seed | 3.0.0 | 3.1.1 | 3.2.0 | 4.6.0 |" in md
    assert "env: No solution found" in md and "whole sweep:" in md
    assert 'class="c c-env"' in (out / "ms-swift-sweep.html").read_text()
    assert sorted(p.name for p in out.glob("ms-swift-*.json")) == [
        "ms-swift-3.0.0.json", "ms-swift-3.1.1.json", "ms-swift-3.2.0.json", "ms-swift-4.6.0.json",
        "ms-swift-sweep.json"]
    calls = len(log.read_text().splitlines())
    assert _cli_in(tmp_path, uv, "ms-swift", "--versions", "3.1.1,3.2.0,4.6.0", "--scenario", "x") == 1
    assert len(log.read_text().splitlines()) == calls  # a second sweep: every env reused, uv never called


def test_bisect_command_end_to_end(tmp_path, fake_world, monkeypatch, capsys):
    uv, log = fake_world
    from harness.sweep import cli as sweep_cli

    # no network; patched where the command line looks it up (harness.sweep.cli)
    monkeypatch.setattr(sweep_cli, "fetch_releases", lambda dist, index=None, **kw: RELEASES)
    monkeypatch.setenv("FAKE_UV_FAIL", "ms-swift==3.1.1")  # the release right before the flip is skipped
    code = _cli_in(tmp_path, uv, "ms-swift", "--bisect", "test_seed_lora_on_full_output_trains_lora",
                   "--good", "4.6.0", "--bad", "3.0.0")
    text = capsys.readouterr().out
    assert code == 1, text  # ambiguous: 3.1.1 could not be tested
    assert "first fixed release: one of 3.1.1, 3.2.0" in text
    monkeypatch.setenv("FAKE_UV_FAIL", "never-matches-anything")
    code = _cli_in(tmp_path, uv, "ms-swift", "--bisect", "seed_lora", "--good", "4.6.0", "--bad", "3.0.0")
    text = capsys.readouterr().out
    assert code == 0 and "first fixed release: ms-swift 3.2.0 (pass)" in text, text
    assert "before: 3.1.1 (fail)" in text
    saved = json.loads((tmp_path / "out" / "ms-swift-bisect.json").read_text())
    assert saved["first"] == "3.2.0" and len(saved["probes"]) <= 6
    assert _cli_in(tmp_path, uv, "ms-swift", "--bisect", "seed_lora", "--good", "3.0.0", "--bad", "4.6.0") == 2
    assert "reversed" in capsys.readouterr().err


def test_bisect_scenario_narrows_the_bisected_test(tmp_path, fake_world, monkeypatch, capsys):
    """``--scenario`` beside ``--bisect`` narrows what each probe runs (one parametrisation of the bisected test): the
    probes' -k is both, and-ed."""
    uv, _ = fake_world
    from harness.sweep import cli as sweep_cli

    monkeypatch.setattr(sweep_cli, "fetch_releases", lambda dist, index=None, **kw: RELEASES)
    seen = []
    real = sweep_cli.run_version
    monkeypatch.setattr(sweep_cli, "run_version", lambda *a, **kw: seen.append(kw["k_expr"]) or real(*a, **kw))
    _cli_in(tmp_path, uv, "ms-swift", "--bisect", "seed_lora", "--good", "4.6.0", "--bad", "3.0.0",
            "--scenario", "moe", "--scenario", "fresh")
    capsys.readouterr()
    assert seen and set(seen) == {"(seed_lora) and ((moe) or (fresh))"}


def test_prune_removes_only_envs_the_pins_no_longer_use(tmp_path, fake_uv, capsys):
    uv, _ = fake_uv
    b = _builder(tmp_path, uv)
    b.index = IndexSettings()
    current = b.ensure(select_pins("ms-swift", "3.2.0")).path
    stale = tmp_path / "envs" / "ms-swift-3.2.0-000000000000"
    uncovered = tmp_path / "envs" / "ms-swift-2.6.1-111111111111"
    other = tmp_path / "envs" / "llamafactory-0.9.5-222222222222"
    for p in (stale, uncovered, other):
        p.mkdir()
    assert sweep.stale_envs(tmp_path / "envs", "ms-swift", IndexSettings(), REPO) == [uncovered, stale]
    assert _cli_in(tmp_path, uv, "ms-swift", "--prune") == 0
    assert current.is_dir() and other.is_dir() and not stale.exists() and not uncovered.exists()
    assert "removed" in capsys.readouterr().out


def test_a_broken_run_is_explained_by_what_pytest_said(tmp_path):
    """`ft-harness report` keeps pytest's output in the report's <session> row (the run log holds only its own last
    line): the version's cell is the exception an import raised there (unsloth < 2026.10.9 without a GPU)."""
    from harness.sweep.failures import run_failure_line
    from harness.sweep.runs import session_output

    report = tmp_path / "r.json"
    said = ('E   harness.errors.AdapterLoadError: the unsloth adapter cannot start: import unsloth raised '
            'NotImplementedError: Unsloth cannot find any torch accelerator? You need a GPU.\n1 error in 3.1s')
    report.write_text(json.dumps({"format": 1, "adapters": [{"name": "unsloth", "tests": [
        {"nodeid": "<session>", "scenario": "<session>", "outcome": "error", "reason": "pytest exited with 3",
         "message": said}]}]}), encoding="utf-8")
    assert "You need a GPU" in run_failure_line(session_output(report))
    assert session_output(tmp_path / "absent.json") == ""
