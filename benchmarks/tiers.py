"""Smoke tier against the full suite, per adapter (plain script, not a test): wall time and framework runs.

    python benchmarks/tiers.py                                   # the reference
    python benchmarks/tiers.py --adapter transformers --adapter 'transformers[load_best_model_at_end=true]'
    python benchmarks/tiers.py --adapter swift --tier smoke      # in the framework's env (tox -e swift's venv)

For each adapter and tier it runs ``pytest --pyargs scenarios --ft-adapter A -m EXPR`` in a fresh process
(framework imports included, serial: what one CI job on 2 cores pays) and prints the wall time, the outcome counts
and the number of framework runs the selection made: calls of the adapter's ``train``, ``merge`` and ``evaluate``
(``benchmarks/count_runs.py`` counts them, forked children included). Tiers: ``smoke`` = ``ft_smoke and not
ft_gpu`` (the PR tier; target at most 300 s per shipped framework), ``full`` = ``not ft_gpu``. Results also go to
``benchmarks/results/tiers.json`` (``-o``). Red scenarios are results here, not errors.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"smoke": "ft_smoke and not ft_gpu", "full": "not ft_gpu"}
SMOKE_BUDGET_S = 300


def measure(adapter: str, marks: str, extra: list[str], report: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        counts_file = Path(tmp) / "runs.txt"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", FT_COUNT_RUNS=str(counts_file),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "pytest", "--pyargs", "scenarios", "-q", "-p", "no:cacheprovider",
               "-p", "count_runs", "--ft-adapter", adapter, "-m", marks, *extra]
        if report is not None:
            cmd += ["--ft-report", str(report)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        runs = collections.Counter(counts_file.read_text().split()) if counts_file.is_file() else collections.Counter()
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    outcomes = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|error|errors)", tail)}
    if proc.returncode not in (0, 1):  # 1: red scenarios (a result); anything else: the run itself broke
        sys.stderr.write(f"{adapter} [{marks}]: pytest exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}\n")
    return {"wall_s": round(wall, 1), "exit": proc.returncode, "outcomes": outcomes,
            "runs": {name: runs.get(name, 0) for name in ("train", "merge", "evaluate")},
            "framework_runs": sum(runs.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", action="append", help="adapter to measure (repeatable; default: reference)")
    ap.add_argument("--tier", action="append", choices=sorted(TIERS), help="tier(s) to run (default: both)")
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "tiers.json"))
    ap.add_argument("--report-dir", help="also write each run's ft-harness report JSON here (ADAPTER-TIER.json), "
                                         "for `ft-harness report --merge`")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments, after '--'")
    args = ap.parse_args(argv)
    results = {}
    for adapter in args.adapter or ["reference"]:
        for tier in args.tier or ["smoke", "full"]:
            report = None
            if args.report_dir:
                Path(args.report_dir).mkdir(parents=True, exist_ok=True)
                report = Path(args.report_dir).resolve() / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", adapter) + f"-{tier}.json")
            results[f"{adapter} {tier}"] = r = measure(adapter, TIERS[tier], args.pytest_args, report)
            flag = " OVER BUDGET" if tier == "smoke" and r["wall_s"] > SMOKE_BUDGET_S else ""
            print(f"{adapter:45s} {tier:5s} {r['wall_s']:7.1f} s  runs {r['framework_runs']:4d} "
                  f"(train {r['runs']['train']}, merge {r['runs']['merge']}, evaluate {r['runs']['evaluate']})  "
                  f"{r['outcomes']}{flag}", flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    out.write_text(json.dumps({**previous, **results}, indent=2, sort_keys=True))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
