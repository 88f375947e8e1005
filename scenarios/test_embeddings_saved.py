"""Embeddings saved — tied and resized embeddings survive save and reload.

The story: the run trained and evaluated well; the saved files load into a different model, without an error.

* peft #2777 (and #2018 / #2244 / #1750; PR #2803 "ensure weight tying"): ``modules_to_save`` on a tied
  ``embed_tokens`` / ``lm_head`` pair trains two separate copies and saves both, while ``config.json`` keeps
  ``tie_word_embeddings=true``: a merged model reloaded with ``from_pretrained`` re-ties them and generates nonsense.
* NeMo Automodel #2571, DeepSpeed #1896 (listed by issue 21): the config's ``tie_word_embeddings`` and the tensors on disk disagree — a
  separate head saved for a tied model (a loader re-ties and drops it), or no head saved for an untied one (a loader
  initialises it at random).
* unsloth #9326 (listed by issue 21; its fix, unsloth PR #9331, "silent dropping of embed_tokens/lm_head"): new
  tokens' ``embed_tokens`` / ``lm_head`` rows silently not trained or not saved; peft PR #1147 and its docs (PR #1335):
  an adapter of a resized model must store the embedding layers, and inference resizes the base the same way before
  loading it.

Arrange: a tiny model with ``tie_word_embeddings=True`` (Qwen2-0.5B style), and the untied tiny model with two special
tokens added by the run (``new_special_tokens``: :data:`harness.models.NEW_TOKENS`, written into every train and eval
text); full and LoRA, 4 steps, a checkpoint at step 2, the eval at step 4. Assert (``assert_embeddings_saved``): the
final save's tie flag agrees with its tensors; the saved tokenizer holds the added tokens, the embeddings (the full
model's, or the adapter's whole-module copy) hold a row per token, and the added rows changed between checkpoint-2 and
the end; reloading the full directory, or base + resize + adapter, reproduces the logged eval loss on the eval set as
the framework encodes it (``training_batches`` of the eval rows, capability ``data``: its template decides which tokens
its eval loss scores).
"""

from __future__ import annotations

import pytest

from harness.models import NEW_TOKENS, build_model, write_token_datasets
from harness.oracles import assert_embeddings_saved

from ._support import spec

pytestmark = [pytest.mark.ft_seed("embeddings"), pytest.mark.ft_requires("sft", "data")]

#: measured on the reference (CPU float32, transformers 5.23 / peft 0.21): reloaded vs logged eval loss are equal
#: (relative difference 0.0 in all four cases: one batch of the same 4 equal-length texts as Trainer's eval); the
#: untied head dropped and re-tied on save moves it by 6.7e-2 relative. Bound (room for another framework's eval
#: batching, still 670x below the bug):
RELOAD_RTOL = 1e-4  # (not harness.oracles.EVAL_RTOL: this reload runs the framework's own eval encoding)

TRAIN_TYPES = [pytest.param("full", marks=pytest.mark.ft_requires("full")),
               pytest.param("lora", marks=pytest.mark.ft_requires("lora"))]


@pytest.mark.ft_smoke("tied-full", "resized-lora")
@pytest.mark.ft_metric("eval_loss")  # the reload must reproduce the eval loss logged at the final step
@pytest.mark.parametrize("train_type", TRAIN_TYPES)
@pytest.mark.parametrize("model", ["tied", pytest.param("resized", marks=pytest.mark.ft_requires("new-tokens"))])
def test_embeddings_survive_save_and_reload(ft_adapter, tiny_assets, tmp_path, model, train_type, ft_device):
    data = write_token_datasets(tmp_path / "data")
    model_dir = tiny_assets.model_dir
    new_tokens: tuple[str, ...] = ()
    if model == "tied":
        model_dir = build_model(tmp_path / "tied", arch=ft_adapter.model_arch, tie_word_embeddings=True)
    else:
        new_tokens = NEW_TOKENS
    run_spec = spec(tiny_assets, tmp_path / "out", model_dir=model_dir, train_type=train_type, max_steps=4,
                    save_steps=2, eval_steps=4, learning_rate=1e-2, seed=42, device=ft_device,
                    cli={"new_special_tokens": list(new_tokens)} if new_tokens else {}).replace(dataset_dir=data)
    # the eval set as the framework encodes it (its template decides which tokens its logged eval loss scores)
    eval_batches = ft_adapter.training_batches(run_spec.replace(dataset_dir=eval_as_train(data, tmp_path / "eval"),
                                                                output_dir=tmp_path / "eval-out"))
    run = ft_adapter.train(run_spec)
    assert_embeddings_saved(run.final_dir, model_dir, eval_batches, new_tokens=new_tokens, rel_tol=RELOAD_RTOL)


def eval_as_train(data, out):
    """A copy of the dataset whose training set is the eval set (what ``training_batches`` reads)."""
    import shutil

    shutil.copytree(data, out)
    shutil.copy(out / "eval.jsonl", out / "train.jsonl")
    return out
