"""Oracles: framework-agnostic checks that judge what a run left on disk.

Each oracle reads files (safetensors headers and tensors, config.json, adapter_config.json,
trainer_state.json), re-loads or re-evaluates where needed, and raises :class:`OracleFailure` (an
``AssertionError``) whose message names the seed, what was expected and what was found. None of
them trusts an adapter's own claims about what it did.

One module per family (the judge of each failure class reads like its bug report):

* :mod:`~harness.oracles.failure` - :class:`OracleFailure` and the failure-class titles (:data:`SEEDS`);
* :mod:`~harness.oracles.reading` - what every family reads off disk (weights, LoRA tensors, logged losses);
* :mod:`~harness.oracles.saves` - what a save must hold (the checkpoint layout, seeds 001 and 003, crash, distributed);
* :mod:`~harness.oracles.resolution` - seed 000 as the framework resolves it (the command line wins, warned);
* :mod:`~harness.oracles.args` - seed 000 end to end (the command line is what trained);
* :mod:`~harness.oracles.resume` - resume equivalence and a resume that is a resume (seed 002 included);
* :mod:`~harness.oracles.equivalence` - runs that must agree (accumulation, packing, LoRA merge);
* :mod:`~harness.oracles.evaluation` - reload and re-evaluate, the best checkpoint (seed 004);
* :mod:`~harness.oracles.chat` - label masks and the saved chat format;
* :mod:`~harness.oracles.embeddings` - new tokens' embedding rows on disk;
* :mod:`~harness.oracles.preference` - DPO's and GRPO's reference model is the policy the run starts from.

This face re-exports every public name: ``from harness.oracles import X`` is the one import scenarios use.
"""

from __future__ import annotations

from ..layout import run_log_history as read_log_history  # the log every family reads, in the run's own layout
from .failure import SEEDS, OracleFailure
from .reading import (checkpoint_weights, checkpoints_fingerprint, dir_fingerprint, final_weights, losses_by_step,
                     start_weights, stat_fingerprint, trained_weights, weights_on_disk)
from .saves import (CONFIG_DTYPES, CompletedCheckpoints, FileDigest, REQUIRED_MODEL_FILES, assert_adapter_only_save,
                    assert_checkpoint_layout, assert_checkpoints_complete, assert_crash_state_sound,
                    assert_full_model_saved, assert_lora_base_is, assert_same_weights, assert_self_contained,
                    assert_served_dtype, assert_trainable_set, checkpoint_digests, completed_checkpoints,
                    generation_config_changes)
from .args import (FIRST_STEP_RTOL, assert_first_step_size, assert_log_matches_cli, assert_lora_reaches_experts,
                  assert_lora_trained_as_asked, assert_saved_args_match)
from .resume import (assert_consumed_in_order, assert_diffusion_lora_reloads, assert_follows_checkpoint,
                    assert_missing_state_reported, assert_resume_equivalent, assert_resumed_into_new_dir,
                    assert_resumed_not_restarted)
from .resolution import (assert_cli_beats_saved, assert_layers_respected, assert_not_inherited,
                         assert_nothing_from_files, from_saved_file)
from .equivalence import (QUANTIZATION_NAMES, assert_every_lora_b_moved, assert_logged_term_present,
                          assert_merged_is_trained_model, assert_runs_agree, names_quantization)
from .evaluation import (EVAL_RTOL, EVAL_RTOL_CUDA, Evaluator, assert_best_checkpoint_kept, assert_evaluated_at,
                        assert_final_is_best, assert_newest_save_kept, assert_saves_reproduce_log, best_logged_step,
                        logged_metrics)
from .chat import (assert_batches_follow_template, assert_batches_teach_assistant, assert_saved_format,
                   assert_thinking_modes_kept, training_sample_of)
from .embeddings import assert_embeddings_saved, batches_loss
from .preference import (DPO_RESUME_RTOL, DPO_REWARD_ATOL, GRPO_KL_ATOL, RENDERINGS,
                         assert_kl_starts_at_zero, assert_kl_survives_resume, assert_reference_is_start, assert_reference_survives_resume,
                         completion_logps, dpo_rewards_by_step, reference_logps)

__all__ = [
    "SEEDS",
    "OracleFailure",
    "assert_trainable_set",
    "assert_lora_reaches_experts",
    "assert_logged_term_present",
    "assert_batches_follow_template",
    "assert_thinking_modes_kept",
    "weights_on_disk",
    "start_weights",
    "losses_by_step",
    "dir_fingerprint",
    "final_weights",
    "checkpoint_weights",
    "trained_weights",
    "stat_fingerprint",
    "checkpoints_fingerprint",
    "read_log_history",
    "assert_full_model_saved",
    "assert_adapter_only_save",
    "assert_checkpoint_layout",
    "REQUIRED_MODEL_FILES",
    "assert_self_contained",
    "generation_config_changes",
    "assert_served_dtype",
    "CONFIG_DTYPES",
    "assert_lora_base_is",
    "assert_checkpoints_complete",
    "assert_crash_state_sound",
    "completed_checkpoints",
    "CompletedCheckpoints",
    "FileDigest",
    "checkpoint_digests",
    "assert_same_weights",
    "assert_cli_beats_saved",
    "assert_nothing_from_files",
    "assert_not_inherited",
    "assert_layers_respected",
    "from_saved_file",
    "FIRST_STEP_RTOL",
    "assert_lora_trained_as_asked",
    "assert_first_step_size",
    "assert_log_matches_cli",
    "assert_saved_args_match",
    "assert_diffusion_lora_reloads",
    "assert_resume_equivalent",
    "assert_resumed_not_restarted",
    "assert_resumed_into_new_dir",
    "assert_follows_checkpoint",
    "assert_consumed_in_order",
    "assert_missing_state_reported",
    "assert_runs_agree",
    "assert_every_lora_b_moved",
    "assert_merged_is_trained_model",
    "names_quantization",
    "QUANTIZATION_NAMES",
    "EVAL_RTOL",
    "EVAL_RTOL_CUDA",
    "Evaluator",
    "logged_metrics",
    "assert_saves_reproduce_log",
    "assert_best_checkpoint_kept",
    "assert_newest_save_kept",
    "assert_final_is_best",
    "best_logged_step",
    "assert_evaluated_at",
    "assert_batches_teach_assistant",
    "training_sample_of",
    "assert_saved_format",
    "batches_loss",
    "assert_embeddings_saved",
    "DPO_REWARD_ATOL",
    "DPO_RESUME_RTOL",
    "GRPO_KL_ATOL",
    "assert_kl_starts_at_zero",
    "assert_kl_survives_resume",
    "RENDERINGS",
    "dpo_rewards_by_step",
    "completion_logps",
    "reference_logps",
    "assert_reference_is_start",
    "assert_reference_survives_resume",
]
