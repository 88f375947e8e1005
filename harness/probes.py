"""Probes: what a training run *did*, observed from the outside, adapter-agnostic.

A run's logs say what the framework claims; a probe sees the tensors. :func:`training_forwards` puts a
global forward pre-hook on every ``torch.nn.Embedding`` in training mode (the token embedding of the
causal LM: its input is the batch of token ids a training step consumes). Global module hooks reach
every model built afterwards, in this process and in forks of it, so they observe any adapter that
trains in-process or in a fork (:func:`harness.runtime.run_in_fork`), whatever its data pipeline
(templates, collators, samplers). Evaluation forwards run in eval mode and are not observed.

:class:`ConsumedSamples` turns those batches into the ids of the dataset samples they hold (a row
holds sample *i* when its tokens from the samples' vocabulary are exactly sample *i*'s words: templates
may add their own tokens and split a sample into turns, padding may surround it), one JSON line per forward in a file, so forked children report too. This is how the
resume scenario reads back the order in which a run consumed its data, as transformers'
``test_resume_batch_order`` does with a dataset that records what it served.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["training_forwards", "ConsumedSamples", "TRIMMED"]

#: how many of a sample's words a row may lack and still be that sample (one word glued to a template
#: marker at each end of a turn, e.g. ms-swift's qwen template ``...\nw1<|im_end|>``)
TRIMMED = 2


@contextlib.contextmanager
def training_forwards(callback: Callable[[Any], None]) -> Iterator[None]:
    """Call ``callback(input_ids)`` on every training-mode ``nn.Embedding`` forward while the block runs."""
    import torch

    def hook(module, args):
        if isinstance(module, torch.nn.Embedding) and module.training and args and torch.is_tensor(args[0]):
            callback(args[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ConsumedSamples:
    """Which dataset samples each training forward consumed, recorded to ``path`` (JSON lines).

    ``texts`` are the training samples (``train.jsonl``'s texts, in file order: the id of a sample is
    its line index); ``tokenizer_dir`` holds the ``tokenizer.json`` that maps their words to ids.
    A row that holds no known sample is recorded as ``-1`` (padding-only rows, a framework's own
    tokens). Use as a context manager around ``adapter.train``; :meth:`order` reads the file back.
    """

    def __init__(self, texts: Sequence[str], tokenizer_dir: Path, path: Path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        keys: list[tuple[int, ...]] = []
        for text in texts:
            ids = [tok.token_to_id(w) for w in text.split()]
            if None in ids:
                raise ValueError(f"sample {text!r} has words outside {tokenizer_dir}/tokenizer.json")
            keys.append(tuple(sorted(ids)))
        if len(set(keys)) != len(keys):
            raise ValueError("two samples hold the same words; their order cannot be read back")
        self.index = {key: i for i, key in enumerate(keys)}
        self.vocab = {t for key in keys for t in key}
        self.path = Path(path)
        self._ctx: contextlib.AbstractContextManager | None = None

    def sample_of(self, row: Sequence[int]) -> int:
        """The index of the sample whose words are exactly ``row``'s sample-vocabulary tokens; else of the one
        sample they are all part of with at most :data:`TRIMMED` words missing (a template may glue a turn's
        first or last word to its own markers, so the tokenizer no longer sees that word); else -1."""
        from collections import Counter

        words = tuple(sorted(t for t in row if t in self.vocab))
        if words in self.index:
            return self.index[words]
        have = Counter(words)
        near = [i for key, i in self.index.items()
                if 0 < len(key) - len(words) <= TRIMMED and not have - Counter(key)]
        return near[0] if len(near) == 1 else -1

    def _record(self, input_ids) -> None:
        rows = input_ids.detach().cpu().tolist()
        line = json.dumps({"pid": os.getpid(), "samples": [self.sample_of(r) for r in rows]})
        with open(self.path, "a", encoding="utf-8") as fh:  # one write per forward: forks append safely
            fh.write(line + "\n")

    def __enter__(self) -> "ConsumedSamples":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")
        self._ctx = training_forwards(self._record)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._ctx is not None
        self._ctx.__exit__(*exc)

    def forwards(self) -> list[list[int]]:
        """The sample ids of every observed training forward, in order."""
        if not self.path.is_file():
            return []
        return [json.loads(line)["samples"] for line in self.path.read_text(encoding="utf-8").splitlines() if line]

    def order(self) -> list[int]:
        """Every consumed sample id, in the order the run consumed them."""
        return [s for batch in self.forwards() for s in batch]
