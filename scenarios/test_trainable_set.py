"""The trainable set — a partly frozen full run trains exactly the parameters it was asked to, and a resume keeps it so.

The story (the threads issue 34 cites): hiyouga/LlamaFactory PR #7872 and #9713 (frozen modules that still train),
modelscope/ms-swift #7318 (``--freeze_aligner false`` logged as ``freeze_aligner=True``: the run trains another set
than the one asked for) and PR #6651 ("fix train_type full freeze_llm"), modelscope/ms-swift #5485 (``--train_type
full --freeze_llm true``: "the llm's gradients and optimizer state are still loaded"). Nothing errors in any of them:
the loss falls either way, and the frozen part silently drifts from the base (or the part meant to train never moves).
The frameworks spell the set their own ways (LLaMA-Factory ``finetuning_type: freeze`` with
``freeze_trainable_layers`` / ``freeze_trainable_modules``, ms-swift ``--freeze_parameters`` /
``--trainable_parameters``, axolotl ``unfrozen_parameters``); the harness says it as regular expressions over
parameter names (``cli={"trainable_parameters": [...]}``, :func:`harness.spec.in_trainable_set`) and an adapter
translates.

Arrange: full fine-tuning of the tiny model (2 decoder layers, untied head) with two trainable sets: the last decoder
layer whole (LLaMA-Factory's ``freeze_trainable_layers: 1``) and every layer's attention plus the output head (a set
that is not one contiguous block, and holds no norm). Act: 4 steps with a checkpoint every 2; and the same run stopped
at step 2 and resumed from its checkpoint to step 4. Assert (:func:`~harness.oracles.assert_trainable_set`): in every
checkpoint and the final save each frozen tensor is byte-identical to the base's, each trainable one changed, and
``optimizer.pt`` holds state for exactly the trainable tensors; the resumed run trains the same set and reproduces the
uninterrupted run's losses and final weights exactly (the optimizer state of that set restored, nothing unfrozen).
Capability ``trainable-set``.
"""

from __future__ import annotations

import pytest

from harness.oracles import assert_resume_equivalent, assert_trainable_set

from ._support import device_tolerance, spec

pytestmark = [pytest.mark.ft_seed("trainable"), pytest.mark.ft_requires("sft", "full", "trainable-set")]

#: id -> trainable_parameters (regular expressions matched against whole parameter names)
TRAINABLE_SETS = {
    "last-layer": [r"model\.layers\.1\..*"],
    "attention-and-head": [r"model\.layers\.\d+\.self_attn\..*", r"lm_head\.weight"],
}
MAX_STEPS, SAVE_STEPS, STOP_AT = 4, 2, 2
#: measured on the reference (CPU float32, transformers 5.23, torch 2.13): the resumed run's losses and final weights
#: equal the uninterrupted run's exactly (difference 0.0), and so does every frozen tensor the base's. On CUDA (not
#: measured: no GPU lent) the resume scenarios' bound (1e-3); the frozen tensors stay exact on every device (never updated)
GPU_RTOL = 1e-3


@pytest.fixture(scope="module")
def runs(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """(trainable set id, "uninterrupted" or "resumed") -> the run's output dir, each trained once for the module."""
    made = {}

    def get(name: str, kind: str):
        if (name, kind) not in made:
            out = tmp_path_factory.mktemp(f"trainable-{name}-{kind}") / "out"

            def run(max_steps: int, **fields):
                return ft_adapter.train(spec(tiny_assets, out, train_type="full", max_steps=max_steps,
                                             save_steps=SAVE_STEPS, device=ft_device,
                                             cli={"trainable_parameters": TRAINABLE_SETS[name]}, **fields))

            if kind == "uninterrupted":
                made[name, kind] = run(MAX_STEPS).output_dir
            else:  # stopped at STOP_AT (its own checkpoint), then continued from it to MAX_STEPS
                run(STOP_AT)
                made[name, kind] = run(MAX_STEPS, resume_from="latest").output_dir
        return made[name, kind]

    return get


@pytest.mark.ft_smoke("last-layer")
@pytest.mark.parametrize("name", TRAINABLE_SETS)
def test_only_the_trainable_set_trains(runs, name, tiny_assets):
    assert_trainable_set(runs(name, "uninterrupted"), tiny_assets.model_dir, TRAINABLE_SETS[name])


@pytest.mark.ft_requires("resume")
@pytest.mark.parametrize("name", TRAINABLE_SETS)
def test_resume_keeps_the_trainable_set(runs, name, tiny_assets, ft_device):
    resumed = runs(name, "resumed")
    assert_trainable_set(resumed, tiny_assets.model_dir, TRAINABLE_SETS[name])
    assert_resume_equivalent(runs(name, "uninterrupted"), resumed, STOP_AT, seed="trainable",
                             **device_tolerance(ft_device, GPU_RTOL))
