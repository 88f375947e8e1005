"""Thinking-model templates — a reasoning chat trains and serves exactly as the model's own template renders it.

The story (the threads issue 34 cites): hiyouga/LlamaFactory PR #10773 (the reasoning of history turns cleaned up "by
fixed message positions", not as the template defines), #9092 (``qwen3_nothink`` identical to ``qwen3``, while the
official template writes an empty think block when thinking is off), #9392, modelscope/ms-swift #4939, and
hiyouga/LlamaFactory #8012 (the same data through two frameworks: AIME24 13.96 vs 75.94). A Qwen3-style template strips
the reasoning of every assistant turn before the last user turn and keeps the final turn's; a framework that renders
the chat with its own template trains another format than the one the model is served in. Nothing errors.

Arrange: the tiny model with a Qwen3-style thinking template (:data:`harness.models.THINKING_TEMPLATE`: ``<think>``
spans, history reasoning stripped, ``enable_thinking=False`` an empty think block) and multi-turn reasoning chats
(:data:`harness.models.THINKING_CHATS`: history turns, an empty think block). Act: one epoch of the framework's own
training batches (capability ``data``), and full and LoRA runs of 2 steps saving each step. Assert: every sample
supervises exactly the tokens the template marks as assistant turns (``{% generation %}``: history answers without
their reasoning, the final reasoning and answer, each through its turn end;
:func:`~harness.oracles.assert_batches_follow_template`); every save's tokenizer renders the training conversation as
trained and prompts its final reply as trained (:func:`~harness.oracles.assert_saved_format`), and prompts it in both
thinking modes as the model's template does (:func:`~harness.oracles.assert_thinking_modes_kept`).
"""

from __future__ import annotations

import pytest

from harness.models import THINKING_CHATS, build_model, write_thinking_datasets
from harness.oracles import (assert_batches_follow_template, assert_saved_format, assert_thinking_modes_kept,
                             training_sample_of)
from harness.task import chat_messages

from ._support import spec

pytestmark = [pytest.mark.ft_seed("thinking"), pytest.mark.ft_requires("sft", "data")]

#: the canonical conversation: a history turn (its reasoning stripped) and a final reasoning turn
CONVERSATION = chat_messages(THINKING_CHATS[0])


@pytest.fixture(scope="module")
def thinking(tiny_assets, tmp_path_factory):
    """(the thinking model's dir, the reasoning chats' dir)."""
    root = tmp_path_factory.mktemp("thinking")
    return build_model(root / "model", thinking=True, seed=0), write_thinking_datasets(root / "data")


def _spec(tiny_assets, thinking, out, train_type, device):
    model_dir, data = thinking
    return spec(tiny_assets, out, model_dir=model_dir, train_type=train_type, max_steps=2, save_steps=1,
                per_device_train_batch_size=4, learning_rate=1e-3, seed=42, device=device).replace(dataset_dir=data)


@pytest.mark.ft_smoke
@pytest.mark.ft_requires("lora")
def test_reasoning_chats_train_as_the_template_renders(ft_adapter, tiny_assets, thinking, tmp_path, ft_device):
    batches = ft_adapter.training_batches(_spec(tiny_assets, thinking, tmp_path / "out", "lora", ft_device))
    assert_batches_follow_template(batches, thinking[1], thinking[0])


@pytest.mark.parametrize("train_type", [pytest.param("full", marks=pytest.mark.ft_requires("full")),
                                        pytest.param("lora", marks=pytest.mark.ft_requires("lora"))])
def test_saved_template_serves_both_thinking_modes(ft_adapter, tiny_assets, thinking, tmp_path, train_type, ft_device):
    run_spec = _spec(tiny_assets, thinking, tmp_path / train_type, train_type, ft_device)
    users = [m for m in CONVERSATION if m["role"] == "user"]  # (found by its user turns: history reasoning is stripped)
    trained_on = training_sample_of(ft_adapter.training_batches(run_spec), users, thinking[0], seed="thinking")
    run = ft_adapter.train(run_spec)
    assert len(run.checkpoints) >= 2, f"expected a checkpoint per step, found {[c.name for c in run.checkpoints]}"
    for directory in [*run.checkpoints, run.final_dir]:
        assert_saved_format(directory, thinking[0], CONVERSATION, trained_on, reply_turns="last", seed="thinking")
        assert_thinking_modes_kept(directory, thinking[0], CONVERSATION)
