"""Stands in for *your* framework: ``myfw train cfg.yml`` trains a causal LM on ``{"text": ...}`` JSON lines.

It is a few lines of transformers ``Trainer`` so the example runs anywhere ft-harness is installed; an adapter for a
real framework calls the framework's own entry point here instead.
"""

from __future__ import annotations

import json
import sys

import yaml


def train(config_path: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    cfg = yaml.safe_load(open(config_path, encoding="utf-8"))
    set_seed(cfg["seed"])
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"])
    if cfg.get("lora"):
        model = get_peft_model(model, LoraConfig(r=cfg["lora"]["r"], lora_alpha=cfg["lora"]["alpha"],
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))

    def rows(path):
        return [{"input_ids": ids, "labels": list(ids)} for ids in
                (tok(json.loads(line)["text"])["input_ids"] for line in open(path, encoding="utf-8"))]

    args = TrainingArguments(output_dir=cfg["output_dir"], max_steps=cfg["steps"], learning_rate=cfg["lr"],
                             per_device_train_batch_size=cfg["batch_size"], lr_scheduler_type="constant",
                             gradient_accumulation_steps=cfg["grad_accum"],
                             logging_steps=cfg["log_every"], save_strategy="steps" if cfg["save_every"] else "no",
                             save_steps=cfg["save_every"] or 500, seed=cfg["seed"], data_seed=cfg["seed"],
                             use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows(cfg["train_file"]))
    trainer.train(resume_from_checkpoint=cfg.get("resume"))
    trainer.save_model()
    trainer.save_state()


if __name__ == "__main__":  # myfw train cfg.yml
    train(sys.argv[2])
