"""The verdict every oracle gives: :class:`OracleFailure` (an ``AssertionError``), and :data:`SEEDS`, the one-line
failure-class titles its messages open with.
"""

from __future__ import annotations

#: seed id -> one-line title used in failure messages and reports
SEEDS = {
    "000": "args-precedence: a saved args.json must never beat the command line",
    "001": "grpo-full-save: a full-parameter run must save the whole model",
    "002": "quantized-lora-resume: LoRA on a quantised base must resume exactly",
    "003": "full-ft-as-lora-base: every full fine-tune checkpoint must be a self-contained model",
    "004": "best-checkpoint: the best evaluated step must be on disk",
    "crash": "crash-during-save: a killed save must never lose the previous checkpoint",
    "pickle": "hostile-checkpoint: loading a checkpoint must never unpickle arbitrary code",
    "dist": "distributed-save: a sharded full-parameter run must save the whole model",
    "resume": "resume-equivalence: an interrupted-and-resumed run must be the run it continues",
    "ga": "grad-accumulation: k micro-batches must train exactly like one batch k times larger",
    "merge": "lora-merge: the merged model must be the trained model",
    "packing": "packing: packed samples must train exactly as if run alone",
    "labels": "label-masking: every training sample must teach its assistant turns, through their end, and nothing else",
    "template": "saved-template: every saved tokenizer must encode a chat exactly as training did, and stop where it ends",
    "layout": "checkpoint-layout: a run leaves checkpoint-N directories at its save cadence, each with its state and weights",
    "ref": "reference-model: preference training must measure its reward against the policy the run starts from",
    "checkpointing": "gradient-checkpointing: recomputing activations must not change what trains",
    "moe": "moe-lora: a LoRA on a mixture of experts trains every expert and the router it reports",
    "router": "router-loss: the router's load-balancing loss counts once per step however the batch is split",
    "thinking": "thinking-template: a reasoning chat trains and serves as the model's own template renders it",
    "trainable": "trainable-set: a partly frozen run trains exactly the parameters asked for, across a resume",
    "embeddings": "embeddings-saved: tied and resized embeddings must be saved as trained and reload to the logged eval",
}


class OracleFailure(AssertionError):
    """A documented failure was observed on disk."""

    def __init__(self, seed: str, message: str):
        self.seed = seed
        super().__init__(f"[seed {seed}: {SEEDS.get(seed, seed)}] {message}")


def _megabytes(n: int) -> str:
    """A size as failure messages print it."""
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"
