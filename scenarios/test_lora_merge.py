"""LoRA merge — the merged model is the trained model.

The story: transformers #31293, peft #1043 / #2321 / #2502, unsloth-zoo PR #810, verl #4553 / #4761:
merging into a quantised base, merged dirs still holding ``lora_`` / ``base_model.model.`` keys, merges
against the wrong base or with the wrong scale. The export "works" and the served model is not the one
that was trained.

Arrange: LoRA (r=4, alpha=16: a scale of 4, so a merge that forgets it shows) trained for 6 steps on an
unquantised base and on nf4, int8 (bitsandbytes) and quanto-int8 bases. Act: the framework's own merge/export (``adapter.merge``: PEFT
``merge_and_unload`` for the reference and plain transformers; ``swift export --merge_lora``,
``llamafactory-cli export`` where wired). Assert: the merged directory is a self-contained model with no
adapter files or keys (the seed 003 oracle), and its logits on the eval set equal those of the model
that trained — the base loaded as in training plus the adapter — within a measured tolerance. For a
quantised base a faithful merge is impossible to the bit (the trained model computed with quantised
weights): the merge must be refused (an error naming the quantisation: the word, the kind or its library), be
faithful to the nf4 model, or warn that it is not (a warning line naming the quantisation).
"""

from __future__ import annotations

import pytest

from harness.adapter import LoraSpec
from harness.oracles import assert_merged_is_trained_model, names_quantization

from ._support import captured_output, quant_params, spec

pytestmark = [pytest.mark.ft_seed("merge"), pytest.mark.ft_requires("sft", "lora", "merge")]

#: measured on the reference (CPU float32, transformers 5.23 / peft 0.21): merged vs base + adapter logits
#: differ by <= 1.2e-6 (logits of magnitude ~1); a merge without the alpha/r scale moves them by 1.09, and
#: merging an nf4-trained LoRA onto the float32 base by 0.18. Bound: 1e-4.
ATOL = 1e-4


@pytest.mark.ft_smoke("none")
@pytest.mark.parametrize("quant", quant_params(None, "nf4", "int8", "quanto-int8"))
def test_merged_model_is_the_trained_model(ft_adapter, tiny_assets, tmp_path, quant, ft_device, capfd, caplog,
                                           recwarn):
    if ft_device != "cpu":
        pytest.skip("merging is a CPU export step")
    run = ft_adapter.train(spec(tiny_assets, tmp_path / "lora", train_type="lora", quantization=quant,
                                lora=LoraSpec(r=4, alpha=16.0), max_steps=6, learning_rate=2e-2, seed=42))
    capfd.readouterr(), caplog.clear(), recwarn.clear()  # judge what the merge says, not the training run
    try:
        merged = ft_adapter.merge(run.final_dir, tmp_path / "merged")
    except Exception as exc:  # noqa: BLE001 - a refusal is correct only for a quantised base, and must say why
        said = str(exc).split("--- framework traceback")[0]  # the error itself, not file paths in its traceback
        if quant is not None and names_quantization(said, quant):
            return  # refused, naming the quantisation (the word, the kind or its library: "an nf4 (bitsandbytes) base")
        raise
    assert_merged_is_trained_model(merged, run.final_dir, tiny_assets.dataset_dir, quantization=quant, atol=ATOL,
                                   output=captured_output(capfd, caplog, recwarn))
