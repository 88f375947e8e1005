"""The torchtune 0.6.1 column's causes, each isolated by a control run (docs/frameworks.md, "torchtune").

Run in the torchtune env from the repository root: ``.tox/torchtune/bin/python docs/evidence/torchtune_0_6_1.py CASE``
with CASE one of ``merge`` (an intermediate LoRA save merges the adapter into the live base on CPU), ``ga`` (gradient
accumulation weights micro-batches by their label count before the shift), ``older`` (a resume from an older epoch
takes the newest epoch counter), ``wholepass`` (a LoRA resume over whole-pass epochs restarts the step and the LR
schedule). Each prints the numbers the column's notes quote. CPU, seconds each.
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from safetensors.torch import load_file  # noqa: E402

from harness.adapter import LoraSpec, RunSpec, load_adapter  # noqa: E402
from harness.layout import run_log_history, use_layout  # noqa: E402
from harness.models import build_assets, write_datasets, write_varied_datasets  # noqa: E402

ROOT = Path(tempfile.mkdtemp(prefix="ft-torchtune-evidence-"))
ASSETS = build_assets(ROOT / "assets", arch="llama", seed=0)
ADAPTER = load_adapter("torchtune")


def log(out: Path) -> list[dict]:
    with use_layout(ADAPTER):
        return run_log_history(out)


def run(name: str, data: Path | None = None, **fields) -> Path:
    spec = RunSpec(model_dir=ASSETS.model_dir, output_dir=ROOT / name, dataset_dir=data or ASSETS.dataset_dir, **fields)
    with use_layout(ADAPTER):
        ADAPTER.train(spec)
    return ROOT / name


def merge() -> None:
    """LoRA, dropout 0, a save every step; then the same with torchtune's merge given a copy of the state dict."""
    import torchtune.modules.peft as peft_pkg
    import torchtune.modules.peft._utils as peft_utils

    lora = LoraSpec(r=4, alpha=8.0, dropout=0.0)
    a = run("in-place", train_type="lora", lora=lora, max_steps=4, save_steps=1, learning_rate=1e-2)
    original = peft_utils.get_merged_lora_ckpt
    peft_utils.get_merged_lora_ckpt = peft_pkg.get_merged_lora_ckpt = (
        lambda state_dict, rank, alpha: original({k: v.clone() for k, v in state_dict.items()}, rank, alpha))
    ADAPTER._recipes.clear()  # the recipe files bind the name when loaded: load them again with the copy
    b = run("on-a-copy", train_type="lora", lora=lora, max_steps=4, save_steps=1, learning_rate=1e-2)
    print("losses, in-place merge :", [e["loss"] for e in log(a)])
    print("losses, merge on a copy:", [e["loss"] for e in log(b)])
    wa, wb = (load_file(str(d / "epoch_3" / "model-00001-of-00001.safetensors")) for d in (a, b))
    print("max |merged weights difference| at step 4:", max((wa[k] - wb[k]).abs().max().item() for k in wa))


def ga() -> None:
    """2 x 2 against 4 x 1 on equal-length samples, on samples of 2 to 11 words, and on those with the recipe's token
    count taken after the label shift (``labels[..., 1:]``)."""
    varied = write_varied_datasets(ROOT / "varied")
    for label, data in (("equal lengths", ASSETS.dataset_dir), ("varied lengths", varied), ("count after shift", varied)):
        if label == "count after shift":
            import torchtune

            source = Path(torchtune.__file__).parent.parent / "recipes" / "full_finetune_single_device.py"
            needle = 'batch["labels"] != self._loss_fn.ignore_index'
            text = source.read_text()
            assert needle in text, "the recipe's token count is not where 0.6.1 has it"
            fixed = ROOT / "full_count_after_shift.py"
            fixed.write_text(text.replace(needle, 'batch["labels"][..., 1:] != self._loss_fn.ignore_index', 1))
            module = runpy.run_path(str(fixed), run_name="full_count_after_shift")
            ADAPTER._recipes["full_finetune_single_device"] = next(
                v for k, v in module.items() if k.endswith("RecipeSingleDevice"))
        tag = label.replace(" ", "-")
        big = run(f"4x1-{tag}", data, train_type="full", max_steps=2, per_device_train_batch_size=4)
        acc = run(f"2x2-{tag}", data, train_type="full", max_steps=2, per_device_train_batch_size=2,
                  gradient_accumulation_steps=2)
        lb, la = log(big)[0]["loss"], log(acc)[0]["loss"]
        print(f"{label}: step-1 loss 4x1 {lb!r}, 2x2 {la!r}, relative difference {abs(la - lb) / lb:.3g}")


def older() -> None:
    """Three epochs of two steps, then a resume from epoch_0 (step 2) of the same output dir."""
    out = run("older", train_type="lora", max_steps=6, save_steps=2, learning_rate=1e-2)
    before = len(log(out))
    run("older", train_type="lora", max_steps=6, save_steps=2, learning_rate=1e-2, resume_from=out / "epoch_0")
    print("resumed from epoch_0 (step 2); steps it logged:", [e["step"] for e in log(out)[before:]])


def wholepass() -> None:
    """8 samples, batch 4: each epoch (2 steps) is a whole pass. Interrupted after epoch_0, resumed from latest."""
    data = write_datasets(ROOT / "small", n_train=8, n_eval=4)
    fields = dict(train_type="lora", max_steps=4, save_steps=2, learning_rate=1e-2, lr_scheduler_type="linear")
    out = run("whole", data, **fields)
    print("uninterrupted (step, lr):", [(e["step"], round(e["learning_rate"], 6)) for e in log(out)])
    import shutil

    shutil.rmtree(out / "epoch_1")  # as if killed before the last epoch's save
    logfile = out / "logs" / "log.txt"
    logfile.write_text("\n".join(logfile.read_text().splitlines()[:2]) + "\n")
    run("whole", data, **fields, resume_from="latest")
    print("resumed from latest (step, lr):", [(e["step"], round(e["learning_rate"], 6)) for e in log(out)[2:]])


if __name__ == "__main__":
    {"merge": merge, "ga": ga, "older": older, "wholepass": wholepass}[sys.argv[1]]()
