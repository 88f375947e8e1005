"""The HTML report: one self-contained page for a (merged) ft-harness-report/1 JSON."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from harness.html_report import cell_class, columns, render_html, upstream_refs
from harness.report import AdapterRun, column_keys, render
from harness.report import TestOutcome as Outcome

ALL = ["passed", "failed", "xfailed", "xpassed", "skipped", "error"]


def _t(scenario, outcome, reason="", seed="000", param=""):
    return Outcome(f"scenarios/{scenario.replace('::', '::')}{param}", scenario, outcome, reason, 0.5, seed)


def merged_report() -> dict:
    """What `report --merge` of several environments (and a sweep with an env failure) gives."""
    s1 = "test_args_precedence.py::test_seed_lora_on_full_output_trains_lora"
    s2 = "test_best_checkpoint.py::test_rotation_keeps_best"
    s3 = "test_grpo_full_save.py::test_sft_full_saves_whole_model"
    runs = [
        AdapterRun("reference", "reference", {}, 0, 10.0,
                   [_t(s1, "passed"), _t(s2, "passed", seed="004"), _t(s3, "passed", seed="001")],
                   {"transformers": "5.23.0", "peft": "0.21.2"}),
        AdapterRun("swift", "swift 3.1.1", {}, 1, 20.0,
                   [_t(s1, "failed", 'AssertionError: <script>alert("x")</script> & trained full'),
                    _t(s2, "xfailed", "https://github.com/huggingface/transformers/issues/35609", seed="004"),
                    _t(s3, "xpassed", "known failure fixed?", seed="001")],
                   {"ms-swift": "3.1.1", "transformers": "4.49.0", "peft": "0.14.0", "trl": "0.15.2"}),
        AdapterRun("swift", "swift 4.6.0", {"load_args": "true"}, 1, 30.0,
                   [_t(s1, "skipped", "needs capability args"), _t(s2, "error", "FileNotFoundError: ckpt", seed="004"),
                    _t(s3, "passed", seed="001")],
                   {"ms-swift": "4.6.0", "transformers": "5.19.0"}),
        AdapterRun("swift", "swift 3.0.0", {}, 3, 0.0,
                   [_t(s, "error", "env: No solution found when resolving dependencies: Because trl<0.12 ...",
                       seed=sd) for s, sd in ((s1, "000"), (s2, "004"), (s3, "001"))],
                   {"ms-swift": "3.0.0"}),
    ]
    return json.loads(render(runs, "json"))


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(merged_report())


def test_every_outcome_class_present(page):
    for cls in ("c-pass", "c-fail", "c-xfail", "c-xpass", "c-skip", "c-error", "c-env"):
        assert f'class="c {cls}"' in page, cls
    assert cell_class({"outcome": "error", "reason": "env: x"})[0] == "c-env"
    assert cell_class({"outcome": "error", "reason": "RuntimeError: x"})[0] == "c-error"
    assert cell_class(None)[0] == "c-none"


def test_reasons_are_escaped_in_title_and_details(page):
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; trained full" in page
    assert 'title="FAIL: AssertionError: &lt;script&gt;' in page  # hover
    assert '<details><summary>FAIL</summary><div class="why">AssertionError: &lt;script&gt;' in page  # expansion


def test_versions_in_headers(page):
    head = page[page.index("<thead>"):page.index("</thead>")]
    for text in ("swift 3.1.1", "swift 4.6.0", "swift 3.0.0", "transformers 4.49.0", "peft 0.14.0", "load_args=true",
                 "reference", "transformers 5.23.0"):
        assert text in head, text


def test_seed_and_upstream_per_row(page):
    tbody = page[page.index("<tbody>"):page.index("</tbody>")]
    rows = re.findall(r"<tr><td class=\"scn\".*?</tr>", tbody, re.S)
    assert len(rows) == 3
    args_row = next(r for r in rows if "test_seed_lora_on_full_output_trains_lora" in r)
    assert '<td class="seed">000</td>' in args_row
    # from scenarios/test_args_precedence.py's docstring ("ms-swift #3168"), read without importing it
    assert '<a href="https://github.com/modelscope/ms-swift/issues/3168"' in args_row
    best_row = next(r for r in rows if "test_rotation_keeps_best" in r)
    assert "transformers/issues/39476" in best_row and '<td class="seed">004</td>' in best_row


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value:
                self.urls.append((tag, name, value))


def test_self_contained_no_network(page):
    parser = _Links()
    parser.feed(page)
    assert not parser.tags & {"script", "link", "img", "iframe", "object", "embed"}
    for tag, attr, url in parser.urls:
        assert tag == "a" and attr == "href", (tag, attr, url)
        assert re.match(r"https://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+$", url), url
    assert "@import" not in page and "url(" not in page


def test_columns_match_the_report_module():
    data = merged_report()
    cols = columns(data)
    runs = [AdapterRun(a["target"], a["name"], a["options"], a["exit_code"], a["duration_s"], [], a["versions"])
            for a in data["adapters"]]
    assert [c["key"] for c in cols] == column_keys(runs)
    assert [c["key"] for c in cols] == ["reference", "swift@3.1.1", "swift@4.6.0", "swift@3.0.0"]


def test_upstream_refs_parsing():
    text = ("ms-swift #3168 and transformers PR #10815, see https://github.com/hiyouga/LLaMA-Factory/issues/2983. "
            "Unknown #12 and Foo #7; ms-swift #3168 again")
    refs = upstream_refs(text)
    assert refs[0] == ("LLaMA-Factory #2983", "https://github.com/hiyouga/LLaMA-Factory/issues/2983")
    assert ("ms-swift #3168", "https://github.com/modelscope/ms-swift/issues/3168") in refs
    assert ("transformers #10815", "https://github.com/huggingface/transformers/issues/10815") in refs
    assert ("Foo #7", None) in refs
    assert sum(label == "ms-swift #3168" for label, _ in refs) == 1


def test_upstream_from_given_sources_and_robust_without(tmp_path):
    mod = tmp_path / "test_x.py"
    mod.write_text('"""Seed: diffusers #9108."""\n\ndef test_y():\n    """SimpleTuner #659."""\n')
    broken = tmp_path / "test_broken.py"
    broken.write_text("def (:\n")
    report = {"format": "ft-harness-report/1", "adapters": [{"target": "a", "versions": {}}],
              "scenarios": [{"id": "test_x.py::test_y", "seed": "002", "results": {"a": {"outcome": "passed"}}},
                            {"id": "test_broken.py::test_z", "seed": None, "results": {"a": {"outcome": "failed",
                                                                                             "reason": "r"}}}]}
    page = render_html(report, scenario_sources={"test_x.py": mod, "test_broken.py": broken})
    assert "bghira/SimpleTuner/issues/659" in page and "huggingface/diffusers/issues/9108" in page
    assert "test_z" in page
    assert "ms-swift" not in render_html(report, scenario_sources={})


def test_sweep_timings_and_rejects_other_json():
    data = merged_report()
    data["sweep"] = {"framework": "ms-swift", "wall_s": 123.4, "jobs": 1,
                     "timings": {"3.1.1": {"env_s": 14.1, "env_cached": False, "run_s": 21.0, "error": None},
                                 "3.0.0": {"env_s": 2.0, "env_cached": False, "run_s": 0.0,
                                           "error": "env: <bad>"}}}
    page = render_html(data)
    assert "<title>ft-harness sweep: ms-swift</title>" in page and "123.4 s wall" in page
    assert "env: &lt;bad&gt;" in page
    with pytest.raises(ValueError, match="not an ft-harness JSON report"):
        render_html({"format": "junit"})


def test_full_failure_message_in_the_expansion():
    data = merged_report()
    for a in data["adapters"]:
        for t in a["tests"]:
            if t["outcome"] == "failed":
                t["message"] = "def test():\n>   assert trained == 'lora'\nE   AssertionError: <full> & more\n"
    page = render_html(data, scenario_sources={})
    assert '<pre class="msg">def test():\n&gt;   assert trained == &#x27;lora&#x27;\nE   AssertionError: &lt;full&gt; &amp; more' in page
    assert page.count('<pre class="msg">') == 1  # only the failed cell has a message
