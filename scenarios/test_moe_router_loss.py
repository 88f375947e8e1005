"""The router's load-balancing loss under gradient accumulation — it counts once per optimizer step, however the batch
is split into micro-batches.

The story (the threads issue 34 cites): NVIDIA-NeMo/Automodel PR #3359 (the MoE auxiliary loss "not normalised across
GA micro-batches"), huggingface/transformers #48690 (open: Qwen3-MoE's auxiliary loss multiplied by the world size under
``average_tokens_across_devices``), huggingface/trl PR #6083. Since transformers PR #34191 a window's cross-entropy is its
tokens' sum over the window's token count, so each micro-batch's loss is a share of the window's; the router's
load-balancing term, which the model's forward adds to every micro-batch's loss at full weight, is then counted once per
micro-batch: gradient accumulation k multiplies its weight by k. Nothing errors; the router is pushed k times harder
towards balance than configured.

Arrange: the tiny ``Qwen3MoeForCausalLM`` (arch ``qwen3_moe``), full fine-tuning with ``router_aux_loss_coef`` 0.01, on
a dataset of one sample repeated, so that every micro-batch is the whole batch in miniature: the load-balancing term of a
batch of 4 is exactly each micro-batch's, and the mean over micro-batches (Megatron's scaling, 1 / micro-batches) is the
large batch's term. Act: batch 4 x GA 1 (the reference arrangement), 2 x 2 and 1 x 4, 3 steps at LR 1e-2; 2 processes
x batch 2 (capability ``distributed``: each rank's batch is the sample too, so each rank's term is the global one); and
batch 4 without the term. Assert: the term is in the loss (step 1 differs from the run without it:
:func:`~harness.oracles.assert_logged_term_present`), and each split logs the reference arrangement's loss and grad norm
at every step and ends with its weights (:func:`~harness.oracles.assert_runs_agree`). Capability ``moe``.
"""

from __future__ import annotations

import pytest

from harness.models import build_model, write_jsonl
from harness.oracles import assert_logged_term_present, assert_runs_agree

from ._support import spec

pytestmark = [pytest.mark.ft_seed("router"), pytest.mark.ft_requires("sft", "full", "moe")]

COEF = 0.01
#: measured on the reference (CPU float32, transformers 5.23, torch 2.13): 1 x 4 and 2 x 2 against 4 x 1, loss within
#: 1.0e-7 / 2.6e-7 relative, grad norm 4.6e-7 / 1.4e-6, weights 6.5e-6 / 2.3e-6 (max abs); the term counted once per
#: micro-batch (plain Trainer, transformers 5.23.0) moves the step-1 loss by 1.5e-2 relative (4.2001 vs 4.1396) and the
#: routers' weights by 5.1e-2; the term itself is 4.9e-3 of the step-1 loss (4.1396 vs 4.1195 without it). Without the
#: term, 1 x 4 against 4 x 1 differs by 1.2e-5 in the step-3 grad norm: the bound is set above that (routing is discrete,
#: so rounding can move more than in a dense model) and 49x below the smallest shift of the bug (2 x 2: 4.9e-3).
#: 2 processes x 2 (torchrun, gloo, FSDP2) against 4 x 1: loss 1.7e-7, grad norm 7.2e-7, weights 1.4e-6; plain
#: Trainer's world-size multiplication (#48690) moves the step-1 loss by 4.9e-3 (4.159773 vs 4.139629: the term twice)
RTOL, WEIGHT_ATOL, TERM_RTOL = 1e-4, 5e-5, 1e-3
#: split id -> (per-device batch, gradient accumulation, processes)
SPLITS = {"4x1": (4, 1, 1), "2x2": (2, 2, 1), "1x4": (1, 4, 1), "2 processes x 2": (2, 1, 2)}


@pytest.fixture(scope="module")
def runs(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """split id (or "4x1-without") -> the run's output dir, each trained once for the module."""
    root = tmp_path_factory.mktemp("router")
    model_dir = build_model(root / "model", arch="qwen3_moe", seed=0)
    data = root / "data"
    sample = {"text": " ".join(f"w{i}" for i in range(3, 14))}
    write_jsonl(data / "train.jsonl", [sample] * 8)
    write_jsonl(data / "eval.jsonl", [sample] * 2)
    made = {}

    def get(name: str):
        if name not in made:
            batch, accumulation, processes = SPLITS[name.removesuffix("-without")]
            cli = {} if name.endswith("-without") else {"router_aux_loss_coef": COEF}
            # one save at the end: its trainer_state.json holds the log on every framework (axolotl writes none
            # into an output dir it never checkpointed)
            run = spec(tiny_assets, root / name, model_dir=model_dir, train_type="full", max_steps=3, save_steps=3,
                       per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, learning_rate=1e-2,
                       device=ft_device, cli=cli, world_size=processes).replace(dataset_dir=data)
            made[name] = ft_adapter.train(run).output_dir
        return made[name]

    return get


def test_router_loss_is_trained(runs):
    assert_logged_term_present(runs("4x1"), runs("4x1-without"), min_rtol=TERM_RTOL, seed="router",
                               what=f"router_aux_loss_coef {COEF}")


@pytest.mark.ft_smoke("1x4")
@pytest.mark.parametrize("split", ["2x2", "1x4"])
def test_router_loss_counts_once_per_step(runs, split):
    assert_runs_agree(runs("4x1"), runs(split), keys=("loss", "grad_norm"), rtol=RTOL, weight_atol=WEIGHT_ATOL,
                      what=f"batch {split} vs 4x1 with the router's load-balancing loss", seed="router")


@pytest.mark.ft_requires("distributed")
def test_router_loss_counts_once_across_processes(runs):
    """2 processes x batch 2 against 1 process x batch 4 (every rank's batch is the same sample, so each rank's
    load-balancing term is the global one): the term counts once, not once per process (huggingface/transformers
    #48690: multiplied by the world size under ``average_tokens_across_devices``)."""
    assert_runs_agree(runs("4x1"), runs("2 processes x 2"), keys=("loss", "grad_norm"), rtol=RTOL,
                      weight_atol=WEIGHT_ATOL, what="2 processes x batch 2 vs 1 x 4 with the router's load-balancing "
                                                    "loss", seed="router")
