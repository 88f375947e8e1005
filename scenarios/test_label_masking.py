"""Label masking — every training sample teaches its assistant turns, through their end, and nothing else.

The story: what the model trains on is not what the user meant, and the loss still falls.

* trl #976 / PR #988 (``DataCollatorForCompletionOnlyLM`` inherits ``labels[labels == pad_token_id] = -100``) and
  trl #1623 "Learning to generate EOS tokens" (the EOS sits where the attention mask is 0; PR #3091 notes that #2405
  re-introduced it): with ``pad_token = eos_token`` (every Llama/Mistral recipe) the EOS that ends each answer is
  masked with the padding and the fine-tuned model never learns to stop.
* trl #1820 / #980: the response template is not found in the tokenised sample (it tokenises differently in
  context), every label becomes -100 and the sample teaches nothing (a warning at best).
* trl PR #550, NeMo Automodel PR #2314 / #3704: masks computed for right padding applied to left-padded rows: labels
  shifted against the inputs.
* DeepSeek-R1 #151 / open-r1 PR #462: a chat template that writes the BOS, tokenised with special tokens added
  again: two BOS tokens in every training sample, one at serving.

Arrange: chat data — prompt/completion rows and multi-turn user/assistant chats of different lengths
(:data:`harness.models.CHAT_TRAIN`, so every batch pads), the tiny model's tokenizer (a chat template that starts with
the BOS) with padding on the right and on the left, and with a pad token of its own or ``pad_token = eos_token``.
Act: the framework's own data path — ``Adapter.training_batches`` returns one epoch of the tokenised, collated
batches it would train on (capability ``data``). Assert, per sample: no label on padding, at least one supervised
token, labels aligned with the inputs, at most one BOS, and the supervised spans are exactly the sample's assistant
turns, each ending with the supervised turn end (the EOS ``</s>``); one epoch covers every row.
"""

from __future__ import annotations

import shutil

import pytest

from harness.models import write_chat_datasets
from harness.oracles import assert_batches_teach_assistant

from ._support import spec

pytestmark = [pytest.mark.ft_seed("labels"), pytest.mark.ft_requires("sft", "lora", "data")]


def tokenizer_variant(model_dir, out_dir, padding_side: str, pad_token: str):
    """A copy of the tiny model whose tokenizer pads on ``padding_side`` with ``pad_token`` (what a user sets)."""
    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tok.padding_side, tok.pad_token = padding_side, pad_token
    tok.save_pretrained(str(out_dir))
    return out_dir


@pytest.mark.ft_smoke("own-pad-right")
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pad_token", [pytest.param("<pad>", id="own-pad"), pytest.param("</s>", id="pad=eos")])
def test_samples_teach_the_assistant_turns(ft_adapter, tiny_assets, tmp_path, padding_side, pad_token):
    data = write_chat_datasets(tmp_path / "chat")
    model = tokenizer_variant(tiny_assets.model_dir, tmp_path / "model", padding_side, pad_token)
    batches = ft_adapter.training_batches(spec(tiny_assets, tmp_path / "out", model_dir=model, train_type="lora",
                                               per_device_train_batch_size=4, seed=42).replace(dataset_dir=data))
    assert_batches_teach_assistant(batches, data, model)
