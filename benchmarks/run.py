"""Benchmarks for ft-harness (plain script, not a test): prints a table and writes JSON.

    python benchmarks/run.py                 # everything (takes a few minutes on 2 cores)
    python benchmarks/run.py --quick         # skip the whole self-test suite and the -n 2 scenario run
    python benchmarks/run.py -o out.json

Measured, all in the same run so the results can be read as ratios to the floor:
  floor_import      bare ``python -c "import torch, transformers, peft, trl"``
  floor_trainer     one bare transformers Trainer run (8 steps) on the same tiny model, incl. imports
  scenarios_serial  ``pytest --pyargs scenarios -m "not ft_gpu"`` on the reference adapter
  scenarios_n2      the same with ``-n 2``
  selftests_n2      the README's test command (``pytest -n 2``)
  per_scenario      seconds per scenario (test function), from ``ft-harness report --format json``
  resolve_per_s     bare ``resolve_layers`` calls per second on hypothesis-drawn inputs (up to 5 layers
                    of 8 keys, nested lists, unicode: the adversarial mix the property test uses)
  resolve_typical_per_s  the same on a typical seed-000 input (4 layers, scalar keys, one warning)
  property_ratio    examples/s of the resolution property / examples/s of a no-op property (same strategy)

Targets (issue 9 / 4; reported, never asserted): scenarios_serial <= 5 x floor_import;
scenarios_n2 >= 1.5 x faster than serial; selftests_n2 < 180 s; resolve_per_s >= 50,000;
property_ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

TRAINER_SNIPPET = """
import tempfile, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from harness.models import build_assets, read_jsonl
torch.set_num_threads(1)
a = build_assets(tempfile.mkdtemp())
tok = AutoTokenizer.from_pretrained(a.model_dir)
rows = [tok(r["text"])["input_ids"] for r in read_jsonl(a.dataset_dir / "train.jsonl")]
ds = [{"input_ids": r, "labels": r} for r in rows]
coll = lambda b: {k: torch.tensor([x[k] for x in b]) for k in b[0]}
model = AutoModelForCausalLM.from_pretrained(a.model_dir)
args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=8, per_device_train_batch_size=4,
                         report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=ds, data_collator=coll).train()
"""


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)
    return time.perf_counter() - start, proc


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode not in (0,):
        sys.stderr.write(f"benchmark step {what!r} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n")


def resolution_numbers(seconds: float = 3.0) -> dict:
    from hypothesis import HealthCheck, given, settings

    sys.path.insert(0, str(ROOT))
    from harness.reference.args import resolve_layers
    from harness.strategies import layered_args

    # (a) bare resolutions per second on pre-drawn inputs
    samples = []

    @settings(max_examples=300, database=None, suppress_health_check=list(HealthCheck))
    @given(layered_args())
    def draw(layers):
        samples.append(layers)

    draw()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for layers in samples:
            resolve_layers(layers)
        n += len(samples)
    per_s = n / (time.perf_counter() - start)

    # (a') a typical seed-000 resolution: 4 layers, a handful of scalar keys, one override warning
    from pathlib import Path as _P

    from harness.adapter import Source

    typical = [(Source("cli"), {"train_type": "lora", "max_steps": 3}),
               (Source("checkpoint", _P("/run/checkpoint-2/args.json")), {"train_type": "full", "seed": 1}),
               (Source("model", _P("/base/args.json")), {"lora_rank": 4, "seed": 2}),
               (Source("default"), {"learning_rate": 1e-3, "train_type": "lora"})]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            resolve_layers(typical)
        n += 1000
    typical_per_s = n / (time.perf_counter() - start)

    # (b) property examples/s vs a no-op property on the same strategy
    def rate(body) -> float:
        @settings(max_examples=1000, database=None, derandomize=True, suppress_health_check=list(HealthCheck),
                  deadline=None)
        @given(layered_args())
        def prop(layers):
            body(layers)

        start = time.perf_counter()
        prop()
        return 1000 / (time.perf_counter() - start)

    def real(layers):
        r = resolve_layers(layers)
        for key, value in r.values.items():
            assert value is not None

    noop_rate = rate(lambda layers: None)
    real_rate = rate(real)
    return {"resolve_per_s": round(per_s), "resolve_typical_per_s": round(typical_per_s), "property_examples_per_s": round(real_rate, 1),
            "noop_examples_per_s": round(noop_rate, 1), "property_ratio": round(real_rate / noop_rate, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the self-test suite and the -n 2 scenario run")
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "bench.json"))
    args = ap.parse_args(argv)
    py = sys.executable
    out: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}

    out["floor_import_s"], p = timed([py, "-c", "import torch, transformers, peft, trl"])
    check(p, "floor_import")
    out["floor_trainer_s"], p = timed([py, "-c", TRAINER_SNIPPET])
    check(p, "floor_trainer")
    scen = [py, "-m", "pytest", "--pyargs", "scenarios", "-q", "-m", "not ft_gpu", "-p", "no:cacheprovider"]
    # -n 2 distributes whole modules (--dist loadfile): module-scoped runs are built once, not per worker
    out["scenarios_serial_s"], p = timed(scen)
    check(p, "scenarios_serial")
    if not args.quick:
        out["scenarios_n2_s"], p = timed(scen + ["-n", "2", "--dist", "loadfile"])
        check(p, "scenarios_n2")
        out["selftests_n2_s"], p = timed([py, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider"])
        check(p, "selftests_n2")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        _, p = timed([py, "-m", "harness.cli", "report", "--format", "json", "-o", str(report), "--", "-m", "not ft_gpu"])
        check(p, "report")
        data = json.loads(report.read_text()) if report.is_file() else {"scenarios": []}
    out["per_scenario_s"] = {s["id"]: s["results"]["reference"]["duration_s"] for s in data["scenarios"]}
    out.update(resolution_numbers())
    for key in list(out):
        if key.endswith("_s") and isinstance(out[key], float):
            out[key] = round(out[key], 2)
    out["ratios"] = {"scenarios_serial_over_import": round(out["scenarios_serial_s"] / out["floor_import_s"], 2),
                     "scenarios_serial_over_trainer": round(out["scenarios_serial_s"] / out["floor_trainer_s"], 2)}
    if "scenarios_n2_s" in out:
        out["ratios"]["speedup_n2"] = round(out["scenarios_serial_s"] / out["scenarios_n2_s"], 2)

    rows = [(k, v) for k, v in out.items() if not isinstance(v, dict)] + list(out["ratios"].items())
    width = max(len(k) for k, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print("\nper scenario (s):")
    for k, v in sorted(out["per_scenario_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {v:7.2f}  {k}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2, sort_keys=True))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
