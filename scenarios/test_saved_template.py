"""Saved template — every checkpoint carries the format it was trained in.

The story: the model trained well and serves badly, because what was saved with it is not the format it trained in.

* LLaMA-Factory #5836 (Llama 3 models not saving the chat template) / #5904 (SFT of a Gemma-2 base: the saved tokenizer
  has no chat template, ``apply_chat_template`` fails at inference); ms-swift #2831 (llama2 fine-tune: no
  ``chat_template`` in the saved ``tokenizer_config.json``).
* LLaMA-Factory #5476 (0.8.3: the saved ``chat_template`` of a Qwen2 fine-tune was rewritten by the framework's own
  template handling; the maintainers' answer: copy the original tokenizer files back) and #7785: the saved template and
  the training template differ, so a server renders prompts the model never saw.
* open-r1 PR #663: the saved ``generation_config.json`` keeps the base's EOS while the chat turns end with another token
  (``pipeline()`` never stops) — the generation config must stop at the template's turn end.
* OpenRLHF #1069, Qwen3-VL #1488 (listed by issue 21; not re-read for this module): saves without the tokenizer files
  or with different stop tokens.

Arrange: chat data (prompt/completion rows and multi-turn chats, :data:`harness.models.CHAT_TRAIN`), the tiny model
whose tokenizer has a chat template; full and LoRA runs of 2 steps saving every step. Act: train, and read the
training-time token ids of a canonical multi-turn conversation from the framework's own data path
(``Adapter.training_batches``, capability ``data``). Assert, for every ``checkpoint-N`` and the final directory: the
saved tokenizer has a chat template and ``apply_chat_template(conversation)`` reproduces the training-time ids
exactly; the generation config that serves the directory (its own, or the base's for an adapter) has the template's
turn-end token among its ``eos_token_id``; the special tokens keep the base tokenizer's ids.
"""

from __future__ import annotations

import pytest

from harness.models import CHAT_TRAIN, write_chat_datasets
from harness.oracles import assert_saved_format, training_sample_of
from harness.task import chat_messages

from ._support import spec

pytestmark = [pytest.mark.ft_seed("template"), pytest.mark.ft_requires("sft", "data")]

#: the canonical conversation: two user/assistant exchanges
CONVERSATION = chat_messages(CHAT_TRAIN[1])


@pytest.mark.ft_smoke("lora")
@pytest.mark.parametrize("train_type", [pytest.param("full", marks=pytest.mark.ft_requires("full")),
                                        pytest.param("lora", marks=pytest.mark.ft_requires("lora"))])
def test_saved_tokenizer_reproduces_training_format(ft_adapter, tiny_assets, tmp_path, train_type, ft_device):
    data = write_chat_datasets(tmp_path / "chat")
    run_spec = spec(tiny_assets, tmp_path / train_type, train_type=train_type, max_steps=2, save_steps=1,
                    per_device_train_batch_size=4, learning_rate=1e-3, seed=42, device=ft_device
                    ).replace(dataset_dir=data)
    trained_on = training_sample_of(ft_adapter.training_batches(run_spec), CONVERSATION, tiny_assets.model_dir)
    run = ft_adapter.train(run_spec)
    saved = [*run.checkpoints, run.final_dir]
    assert len(run.checkpoints) >= 2, f"expected a checkpoint per step, found {[c.name for c in run.checkpoints]}"
    for directory in saved:
        assert_saved_format(directory, tiny_assets.model_dir, CONVERSATION, trained_on)
