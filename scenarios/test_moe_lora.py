"""LoRA on a mixture of experts — the adapter trains every expert and the router it reports, and reloads as trained.

The story (the threads issue 34 cites): huggingface/peft #3009 (transformers 5 stores a layer's experts as one 3-D
parameter per projection, so module-level LoRA, a search for ``nn.Linear`` targets, misses them), unslothai/unsloth PR
#6936 (gpt-oss: "LoRA attached to attention only and left every expert frozen, while still printing 'Enabling LoRA on
MoE parameters'"), PR #11014, NVIDIA-NeMo/Automodel #1151. Nothing errors: attention trains, the loss falls, and the
experts, most of an MoE model's weights, are the base's. On this stack (transformers 5.23, PEFT 0.21.2) PEFT's
``all-linear`` reaches the fused experts and the router as ``target_parameters``; the scenario guards the frameworks'
own target selection and older stacks.

Arrange: a tiny ``Qwen3MoeForCausalLM`` (``harness.models`` arch ``qwen3_moe``: 2 layers, 4 experts, 2 per token, fused
``gate_up_proj`` / ``down_proj``), LoRA ``all-linear`` (the task's default), 4 steps at LR 1e-2, a save and an evaluation
every 2. Assert (:func:`~harness.oracles.assert_lora_reaches_experts`): every saved adapter, merged into its base as a
user serving it merges, changed every expert of every layer and every router, and its ``adapter_config.json`` names
them; every evaluated save reloads to the eval loss the run logged (:func:`~harness.oracles.assert_saves_reproduce_log`).
Capability ``moe``.
"""

from __future__ import annotations

import pytest

from harness.layout import run_checkpoints
from harness.models import build_model
from harness.oracles import assert_lora_reaches_experts, assert_saves_reproduce_log

from ._support import eval_rtol, evaluator, spec

pytestmark = [pytest.mark.ft_seed("moe"), pytest.mark.ft_requires("sft", "lora", "moe")]


@pytest.fixture(scope="module")
def moe_run(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """(the run's spec, its output dir): LoRA on the tiny MoE model, trained once for the module."""
    root = tmp_path_factory.mktemp("moe")
    model_dir = build_model(root / "model", arch="qwen3_moe", seed=0)
    run = spec(tiny_assets, root / "out", model_dir=model_dir, max_steps=4, save_steps=2, eval_steps=2,
               learning_rate=1e-2, device=ft_device)
    return run, ft_adapter.train(run).output_dir


@pytest.mark.ft_smoke
def test_lora_trains_every_expert_and_router(moe_run):
    run, out = moe_run
    saves = run_checkpoints(out)
    assert saves, f"arrange: the run saved no checkpoint-N in {out} (save_steps 2 over 4 steps)"
    for save in saves:
        assert_lora_reaches_experts(save)


def test_moe_saves_reload_to_the_logged_eval(moe_run, ft_adapter, ft_device):
    run, out = moe_run
    assert_saves_reproduce_log(out, evaluator(ft_adapter, run), rtol=eval_rtol(ft_device), seed="moe")
