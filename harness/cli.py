"""``ft-harness``: run the regression scenarios against a fine-tuning framework's adapter.

Commands:
  run     run every scenario against one adapter (default: the reference) and print the matrix
  report  run against one or more adapters and write a scenario x adapter matrix (md/json/junit/text)
  list    list the scenarios, the seed each reproduces and the capabilities each needs

Exit status: 0 when nothing failed, 1 when a scenario failed or errored (or a known failure
unexpectedly passed), 2 on usage errors, 5 when the filters selected no scenario.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

EPILOG = """\
examples:
  ft-harness run                                   # the scenario matrix on the reference adapter
  ft-harness run --adapter harness.mutants:ArgsJsonBeatsCli
  ft-harness run -- -k best_checkpoint -x          # anything after -- goes to pytest
  ft-harness report --adapter reference --adapter harness.mutants:RotationDeletesBest \\
                    --format md -o matrix.md
  ft-harness report --adapter swift --adapter 'swift[load_args=true]' --format json -o swift.json
  ft-harness report --merge swift.json --merge llamafactory.json --format md
  ft-harness list

An adapter is 'module:Class' (a class satisfying harness.adapter.FrameworkAdapter) or an
entry-point name in the 'ft_harness.adapters' group ('reference' is built in). Options reach the
adapter's constructor: --adapter-option load_args=true (repeatable; applies to every adapter).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ft-harness", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{run,report,list}")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--adapter-option", action="append", default=[], metavar="KEY=VALUE",
                        help="option passed to the adapter constructor (repeatable)")
        sp.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="after '--': extra pytest arguments (e.g. -- -k resume -x -m gpu)")

    run = sub.add_parser("run", help="run all scenarios against one adapter and print the result table",
                         description="Run all scenarios against one adapter (default: reference) and print a "
                                     "scenario table. Exit 1 if anything failed.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--adapter", default=None, metavar="MODULE:CLASS",
                     help="adapter under test (default: $FT_HARNESS_ADAPTER or 'reference')")
    common(run)

    rep = sub.add_parser("report", help="scenario x adapter matrix for one or more adapters",
                         description="Run the scenarios against each --adapter and write the matrix.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("--adapter", action="append", default=None, metavar="MODULE:CLASS",
                     help="adapter to include (repeatable; default: reference); 'NAME[key=value,...]' gives "
                          "that adapter its own options")
    rep.add_argument("--format", choices=("md", "json", "junit", "text"), default="md", help="output format")
    rep.add_argument("-o", "--output", default=None, metavar="FILE", help="write the report here (default: stdout)")
    rep.add_argument("--brief", action="store_true",
                     help="md/text: outcome words only in the cells (no failure messages)")
    rep.add_argument("--merge", action="append", default=[], metavar="REPORT.json",
                     help="include the adapters of a JSON report made elsewhere (e.g. in a framework's tox env); "
                          "repeatable; with --merge and no --adapter nothing is run")
    common(rep)

    sub.add_parser("list", help="list scenarios, their seeds and required capabilities")
    return p


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
    import pytest

    rows: list[tuple[str, str, str]] = []

    class Lister:
        def pytest_collection_modifyitems(self, items):
            seen = set()
            for item in items:
                key = f"{os.path.basename(str(item.fspath))}::{item.originalname}"
                if key in seen:
                    continue
                seen.add(key)
                seed = item.get_closest_marker("seed")
                caps = sorted({c for m in item.iter_markers("requires") for c in m.args})
                rows.append((key, seed.args[0] if seed else "", ", ".join(caps)))

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as captured:
        code = pytest.main(["--pyargs", "scenarios", "--collect-only", "-q", "-p", "no:cacheprovider"],
                           plugins=[Lister()])
    if code not in (0, 5):
        print(captured.getvalue(), file=sys.stderr)
        return 2
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'scenario'.ljust(width)}  seed  requires")
    for name, seed, caps in rows:
        print(f"{name.ljust(width)}  {seed.ljust(4)}  {caps}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "list":
        return _list()
    from .report import render, run_adapter

    options = _options(args.adapter_option)
    extra = _pytest_args(args.pytest_args)
    if args.command == "run":
        run = run_adapter(args.adapter, options, extra)
        if run.exit_code == 5:
            print("ft-harness: no scenario was collected (pytest exit 5): check the -k/-m filters", file=sys.stderr)
            return 5
        print(render([run], "text"))
        return 1 if run.failed else 0
    from .report import load_runs

    merged = []
    for path in args.merge:
        try:
            merged += load_runs(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"ft-harness: cannot merge {path}: {exc}") from exc
    targets = args.adapter or ([] if merged else ["reference"])
    runs = [run_adapter(None if t == "reference" else t, options, extra) for t in targets] + merged
    text = render(runs, args.format, reasons=not args.brief)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"ft-harness: wrote {args.format} report for {len(runs)} adapter(s) to {args.output}", file=sys.stderr)
    else:
        print(text)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
