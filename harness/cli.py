"""``ft-harness``: run the regression scenarios against a fine-tuning framework's adapter.

Commands:
  run     run every scenario against one adapter (default: the reference) and print the matrix
  report  run against one or more adapters, or merge JSON reports, and write a scenario x adapter
          matrix (md/json/junit/text/html)
  list    list the scenarios, the seed each reproduces and the capabilities each needs
  check   read your own training config, run the scenarios its settings reach (mapped onto the tiny task) on
          the installed framework, and answer per setting
  status  render one dated status page per framework (release x scenario, flips, red-cell causes) from reports
  sweep   run the scenarios over framework / library releases and bisect where a verdict flips

Exit status: 0 when nothing failed, 1 when a scenario failed or errored (or a known failure
unexpectedly passed), 2 on usage errors, 3 when a pytest run itself broke (report --allow-failures),
5 when the filters selected no scenario.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG = """\
examples:
  ft-harness run                                   # the scenario matrix on the reference adapter
  ft-harness run --adapter harness.mutants:ArgsJsonBeatsCli --tb   # ... with every failure in full
  ft-harness run -k best_checkpoint -x             # unknown arguments go to pytest ('--' works too)
  ft-harness report --adapter reference --adapter harness.mutants:RotationDeletesBest \\
                    --format md -o matrix.md
  ft-harness report --adapter swift --adapter 'swift[load_args=true]' --format json -o swift.json
  ft-harness report --merge 'reports/*.json' --format md      # files and globs, several per --merge
  ft-harness report --merge reports/*.json --format html -o matrix.html
  pytest --pyargs scenarios -n auto --ft-adapter swift --ft-report swift.json   # the same JSON from pytest
  ft-harness list
  ft-harness check --framework llamafactory --config my_lora_sft.yaml   # does my version, with my config, break?
  ft-harness status --merge 'reports/*.json' -o docs/status              # one page per framework x release

An adapter is 'module:Class' (a subclass of harness.adapter.Adapter, or any class with its members) or an
entry-point name in the 'ft_harness.adapters' group ('reference' is built in). Options reach the
adapter's constructor: --adapter-option load_args=true (repeatable; applies to every adapter).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ft-harness", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{run,report,list,check,status,sweep}")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--adapter-option", action="append", default=[], metavar="KEY=VALUE",
                        help="option passed to the adapter constructor (repeatable)")
        sp.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="extra pytest arguments (e.g. -k resume -x -m 'not ft_gpu'); '--' before them is "
                             "optional")

    run = sub.add_parser("run", help="run all scenarios against one adapter and print the result table",
                         description="Run all scenarios against one adapter (default: reference) and print a "
                                     "scenario table. Exit 1 if anything failed.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--adapter", default=None, metavar="MODULE:CLASS",
                     help="adapter under test (default: $FT_HARNESS_ADAPTER or 'reference')")
    run.add_argument("--tb", action="store_true",
                     help="after the table, print every failure in full (assertion message and traceback)")
    common(run)

    rep = sub.add_parser("report", help="scenario x adapter matrix for one or more adapters",
                         description="Run the scenarios against each --adapter and write the matrix.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("--adapter", action="append", default=None, metavar="MODULE:CLASS",
                     help="adapter to include (repeatable; default: reference); 'NAME[key=value,...]' gives "
                          "that adapter its own options")
    rep.add_argument("--format", choices=("md", "json", "junit", "text", "html"), default="md",
                     help="output format (html: one self-contained file with a colour matrix)")
    rep.add_argument("-o", "--output", default=None, metavar="FILE",
                     help="write the report here, creating its directory (default: stdout)")
    rep.add_argument("--allow-failures", action="store_true",
                     help="exit 0 when scenarios failed (the matrix is the product), 3 only when a run itself broke")
    rep.add_argument("--brief", action="store_true",
                     help="md/text: outcome words only in the cells (no failure messages)")
    rep.add_argument("--merge", action="extend", nargs="+", default=[], metavar="REPORT.json",
                     help="include the adapters of JSON reports made elsewhere (a framework's tox env, pytest "
                          "--ft-report): files or quoted globs, several per flag; with --merge and no --adapter "
                          "nothing is run")
    common(rep)

    sub.add_parser("list", help="list scenarios, their seeds and required capabilities")

    st = sub.add_parser("status", help="one status page per framework (release x scenario) from JSON reports",
                        description="Group the runs of ft-harness-report/1 JSONs (--ft-report, 'ft-harness report "
                                    "--format json', sweeps' <framework>-sweep.json) by framework and write "
                                    "<framework>.md per framework plus README.md: the release x scenario matrix, "
                                    "where a verdict flips between consecutive releases, every red cell's cause with "
                                    "its upstream threads, the library versions behind each column. Runs nothing.")
    st.add_argument("--merge", action="extend", nargs="+", required=True, metavar="REPORT.json",
                    help="reports: files or quoted globs, several per flag")
    st.add_argument("-o", "--output", default="docs/status", metavar="DIR",
                    help="directory for the pages (default: docs/status)")
    st.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="the date on the pages (default: today, UTC)")

    from .check.configs import FRAMEWORKS as CHECK_FORMATS  # no ML imports: the readers only

    chk = sub.add_parser("check", help="judge your own config's settings on the installed framework",
                         description="Read a training config, map the settings the scenarios are sensitive to (eval / "
                                     "save cadence, save_total_limit, load_best_model_at_end, gradient accumulation, "
                                     "packing, resume, quantisation, LoRA targets, load_args) onto the tiny task, run "
                                     "the scenarios they reach on the installed framework and answer per setting. "
                                     "Exit 0: every answer PASS; 1: a FAIL or ERROR; 2: the config cannot be read; "
                                     "3: the run itself broke.",
                         epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("--framework", required=True, choices=CHECK_FORMATS,
                     help="the config's format, and the adapter it is checked on unless --adapter says otherwise")
    chk.add_argument("--config", required=True, metavar="FILE",
                     help="LLaMA-Factory / axolotl YAML, a file holding the ms-swift command line, or a "
                          "TrainingArguments JSON")
    chk.add_argument("--adapter", default=None, metavar="MODULE:CLASS",
                     help="check on this adapter instead (default: the framework's own; 'reference' for the "
                          "harness's correct implementation)")
    chk.add_argument("--dry-run", action="store_true",
                     help="print the settings read, the tiny arrangement and the tests it would run; train nothing")
    common(chk)
    try:
        from .sweep import add_parser as add_sweep
    except ImportError:  # pragma: no cover
        pass
    else:
        add_sweep(sub)
    return p


CHECK_EPILOG = """\
examples:
  ft-harness check --framework llamafactory --config examples/train_lora/llama3_lora_sft.yaml
  ft-harness check --framework axolotl --config lora.yml --dry-run
  ft-harness check --framework swift --config train.sh      # the file holds 'swift sft --eval_steps 50 ...'
  ft-harness check --framework transformers --config training_args.json --adapter reference

Each answer names your settings, the tiny arrangement they were mapped onto (the ratios and flags that make the
failure possible, not your numbers), the verdict with what the oracle found, and a fix. Keys no scenario is
sensitive to are listed as not checked. Everything is written in a temporary directory.
"""


def _status(args) -> int:
    import datetime

    from .report.status import write_status_pages

    runs = _load_reports(args.merge)
    date = args.date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    written = write_status_pages(runs, Path(args.output), date)
    if len(written) == 1:
        print(f"ft-harness status: no run in these reports names a framework version (nothing but {written[0]})",
              file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _check(args, extra: list[str]) -> int:
    from .check import answers, plan, read_config, render, run_check
    from .errors import ConfigError

    try:
        config = read_config(args.framework, args.config)
    except ConfigError as exc:
        print(f"ft-harness check: {exc}", file=sys.stderr)
        return 2
    the_plan = plan(config)
    adapter = args.adapter or args.framework  # each config format's own adapter has the framework's name
    if args.dry_run or not the_plan.questions:
        print(render(config, the_plan, adapter, None, None), end="")
        return 0
    run = run_check(the_plan, None if adapter == "reference" else adapter, _options(args.adapter_option), extra)
    results = answers(the_plan, run)
    print(render(config, the_plan, adapter, run, results), end="")
    if run.broken:
        print(f"ft-harness check: the scenario run broke: {run.tests[-1].reason if run.tests else run.exit_code}",
              file=sys.stderr)
        return 3
    return 1 if any(a.verdict in ("FAIL", "ERROR") for a in results) else 0


def _options(pairs: Sequence[str]) -> dict[str, str]:
    from .adapter import parse_adapter_options
    from .errors import AdapterLoadError

    try:
        return parse_adapter_options(pairs, flag="--adapter-option")
    except AdapterLoadError as exc:
        raise SystemExit(f"ft-harness: {exc}") from exc


def _pytest_args(args: Sequence[str]) -> list[str]:
    args = list(args)
    return args[1:] if args and args[0] == "--" else args


def _list() -> int:
    import contextlib
    import io

    import pytest

    rows: dict[str, dict] = {}

    class Lister:
        def pytest_collection_modifyitems(self, items):
            from .plugin import markers

            for item in items:
                key = f"{os.path.basename(str(item.fspath))}::{item.originalname}"
                row = rows.setdefault(key, {"seed": "", "common": None, "params": {}})
                seed = markers(item, "ft_seed")
                row["seed"] = seed[0].args[0] if seed else row["seed"]
                caps = {c for m in markers(item, "ft_requires") for c in m.args}
                caps |= {f"metric {m.args[0]}" for m in item.iter_markers("ft_metric") if m.args}  # logged metric
                row["common"] = caps if row["common"] is None else row["common"] & caps
                param = item.name[len(item.originalname):].strip("[]")
                row["params"][param] = caps

    with contextlib.redirect_stdout(io.StringIO()) as captured:
        code = pytest.main(["--pyargs", "scenarios", "--collect-only", "-q", "-p", "no:cacheprovider"],
                           plugins=[Lister()])
    if code not in (0, 5):
        print(captured.getvalue(), file=sys.stderr)
        return 2
    width = max(len(k) for k in rows) if rows else 10
    print(f"{'scenario'.ljust(width)}  seed  requires (+ per parametrisation)")
    for name, row in rows.items():
        common = row["common"] or set()
        extra = {}
        for param, caps in row["params"].items():
            for cap in sorted(caps - common):
                extra.setdefault(cap, []).append(param)
        text = ", ".join(sorted(common))
        if extra:
            text += ("; " if text else "") + "; ".join(f"{cap} for [{', '.join(ps)}]" for cap, ps in extra.items())
        print(f"{name.ljust(width)}  {row['seed'].ljust(4)}  {text}")
    return 0


def _merge_paths(patterns: Sequence[str]) -> list[str]:
    """Files and globs (quoted, so the shell left them alone) -> files, in order; a glob matching nothing is an error."""
    import glob

    paths: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            found = sorted(glob.glob(pattern))
            if not found:
                raise SystemExit(f"ft-harness: --merge {pattern!r} matches no file")
            paths += found
        else:
            paths.append(pattern)
    return paths


def _load_reports(patterns: Sequence[str]) -> list:
    """The runs of every JSON report the files and globs name, in order; a clear exit naming an unreadable one."""
    from .report import load_runs

    runs = []
    for path in _merge_paths(patterns):
        try:
            runs += load_runs(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"ft-harness: cannot read report {path}: {exc}") from exc
    return runs


def _print_failures(runs) -> None:
    from .report.model import RED_OUTCOMES

    for run in runs:
        for t in run.tests:
            if t.outcome in RED_OUTCOMES:
                print(f"\n{'=' * 20} [{run.target}] {t.outcome.upper()} {t.nodeid} {'=' * 20}")
                print(t.message or t.reason)


_PYTEST_TB_STYLES = {"auto", "long", "short", "line", "native", "no"}


def _take_own_tb(argv: list[str]) -> tuple[list[str], bool]:
    """``run ... --tb`` anywhere (pytest's own ``--tb STYLE`` / ``--tb=STYLE`` pass through untouched)."""
    if not argv or argv[0] != "run":
        return argv, False
    for i, token in enumerate(argv):
        if token == "--":  # everything after it is pytest's
            break
        if token == "--tb" and (i + 1 == len(argv) or argv[i + 1] not in _PYTEST_TB_STYLES):
            return argv[:i] + argv[i + 1:], True
    return argv, False


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv, own_tb = _take_own_tb(list(sys.argv[1:] if argv is None else argv))
    args, unknown = parser.parse_known_args(argv)
    if own_tb:
        args.tb = True
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "sweep":
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        from .sweep import main as sweep_main

        return sweep_main(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "list":
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return _list()
    if args.command == "status":
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return _status(args)
    from .report import render, run_adapter

    options = _options(args.adapter_option)
    extra = unknown + _pytest_args(args.pytest_args)
    if args.command == "check":
        return _check(args, extra)
    if args.command == "run":
        run = run_adapter(args.adapter, options, extra)
        if run.exit_code == 5:
            print("ft-harness: no scenario was collected (pytest exit 5): check the -k/-m filters", file=sys.stderr)
            return 5
        print(render([run], "text"))
        if args.tb:
            _print_failures([run])
        elif run.failed:
            print("ft-harness: failure messages are cut in the table; --tb prints them in full", file=sys.stderr)
        return 3 if run.broken else 1 if run.failed else 0
    merged = _load_reports(args.merge)
    targets = args.adapter or ([] if merged else ["reference"])
    runs = [run_adapter(None if t == "reference" else t, options, extra) for t in targets] + merged
    text = render(runs, args.format, reasons=not args.brief)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"ft-harness: wrote {args.format} report for {len(runs)} adapter(s) to {args.output}", file=sys.stderr)
    else:
        print(text)
    if any(r.broken for r in runs):
        return 3
    return 0 if args.allow_failures else 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
