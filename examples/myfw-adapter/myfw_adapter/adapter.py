"""The adapter: what a user of myfw would write in cfg.yml for one RunSpec, and how they launch it."""

from __future__ import annotations

from harness.kit import ConfigFileAdapter, write_config_file


class MyFwAdapter(ConfigFileAdapter):
    name = "myfw"
    framework = "transformers"  # the distribution whose version heads the report (yours: your framework's)
    capabilities = frozenset({"sft", "full", "lora", "resume"})  # only what myfw can do; the rest is skipped
    dataset_format = "completion"  # train.jsonl rows become {"text": ...}
    options = {"lora_alpha_scale": ("1", "multiply lora_alpha by this (an example option)")}
    known_failures_when = {  # a failure that only one option setting has (scenario id prefix -> reason)
        "lora_alpha_scale=0": {"test_resume_equivalence.py::test_resume_equals_uninterrupted[cpu-lora":
                               "alpha 0: LoRA does not train, nothing to compare"},
    }

    def write_config(self, spec, values, data, workdir):
        resume = spec.resume_from
        cfg = {"model": str(spec.model_dir), "output_dir": str(spec.output_dir), "train_file": str(data["train"]),
               "steps": values["max_steps"], "lr": values["learning_rate"],
               "batch_size": values["per_device_train_batch_size"], "save_every": values["save_steps"],
               "grad_accum": values["gradient_accumulation_steps"],
               "seed": values["seed"], "log_every": values["logging_steps"],
               "resume": True if resume == "latest" else (str(resume) if resume else None)}
        if values["train_type"] == "lora":
            cfg["lora"] = {"r": values["lora_rank"],
                           "alpha": values["lora_alpha"] * float(self.option_values["lora_alpha_scale"])}
        return write_config_file(workdir / "cfg.yml", cfg)

    def launch(self, config, spec):  # in a forked child, torch on one thread
        from . import framework

        framework.train(str(config))  # what `myfw train cfg.yml` runs

    def preload(self):  # imported once in the parent, not once per forked run
        import transformers  # noqa: F401
