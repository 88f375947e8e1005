"""Unit tests for the train/serve format oracles (issue 21), fed hand-made batches and directories so that every
failure branch is reached deliberately and its message checked — and the correct encoding passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.models import CHAT_TRAIN, build_tokenizer, write_chat_datasets
from harness.oracles import OracleFailure, assert_batches_teach_assistant, assert_saved_format
from harness.task import chat_messages, encode_chat


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("format")
    tok = build_tokenizer()
    tok.save_pretrained(str(root / "tok"))
    return tok, write_chat_datasets(root / "data"), root / "tok"


def _batches(tok, *, mutate=None, left=False):
    """The correct encoding of every CHAT_TRAIN row, padded (right, or left by hand) in one batch; ``mutate(ids,
    labels, mask)`` edits the rows in place."""
    rows = [encode_chat(tok, chat_messages(r)) for r in CHAT_TRAIN]
    width = max(len(r["input_ids"]) for r in rows)
    ids, labels, mask = [], [], []
    for r in rows:
        pad = width - len(r["input_ids"])
        n = len(r["input_ids"])
        if left:
            ids.append([0] * pad + r["input_ids"]), labels.append([-100] * pad + r["labels"])
            mask.append([0] * pad + [1] * n)
        else:
            ids.append(r["input_ids"] + [0] * pad), labels.append(r["labels"] + [-100] * pad)
            mask.append([1] * n + [0] * pad)
    if mutate:
        mutate(ids, labels, mask)
    return [{"input_ids": ids, "labels": labels, "attention_mask": mask}]


@pytest.mark.parametrize("left", [False, True])
def test_correct_encoding_passes(chat, left):
    tok, data, tok_dir = chat
    assert assert_batches_teach_assistant(_batches(tok, left=left), data, tok_dir) == len(CHAT_TRAIN)


def _eos_masked(ids, labels, mask):
    for row_ids, row_labels in zip(ids, labels):
        for i, t in enumerate(row_ids):
            if t == 3:  # </s>
                row_labels[i] = -100


def _label_on_pad(ids, labels, mask):
    labels[0][-1] = 5  # sample 0 is the shortest row but one: it pads on the right


def _all_masked(ids, labels, mask):
    labels[2] = [-100] * len(labels[2])


def _shifted(ids, labels, mask):
    labels[1] = labels[1][1:] + [-100]


def _double_bos(ids, labels, mask):
    ids[0][1] = 2


def _prompt_trained(ids, labels, mask):
    labels[0] = [t if m else -100 for t, m in zip(ids[0], mask[0])]


def _row_dropped(ids, labels, mask):
    for seq in (ids, labels, mask):
        seq[3] = list(seq[0])


@pytest.mark.parametrize("mutate, message", [
    (_eos_masked, "supervised without its turn end: '</s>' carries label -100"),
    (_label_on_pad, "padding positions (attention mask 0) carry a label"),
    (_all_masked, "every label is -100: the sample teaches nothing"),
    (_shifted, "labels are not aligned with the inputs"),
    (_double_bos, "2 BOS tokens"),
    (_prompt_trained, "are not the assistant turns of any training sample"),
    (_row_dropped, "never holds train.jsonl rows [4]"),
])
def test_each_failure_is_named(chat, mutate, message):
    tok, data, tok_dir = chat
    with pytest.raises(OracleFailure, match="label-masking") as info:
        assert_batches_teach_assistant(_batches(tok, mutate=mutate), data, tok_dir)
    assert message in str(info.value)


def test_missing_attention_mask_is_named(chat):
    tok, data, tok_dir = chat
    batch = _batches(tok)[0]
    del batch["attention_mask"]
    with pytest.raises(OracleFailure, match="no \\['attention_mask'\\]"):
        assert_batches_teach_assistant([batch], data, tok_dir)


def test_chat_encoding_has_one_bos_and_supervises_turn_ends(chat):
    tok = chat[0]
    enc = encode_chat(tok, chat_messages(CHAT_TRAIN[1]))
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens.count("<s>") == 1 and tokens[0] == "<s>"
    assert [t for t, lab in zip(tokens, enc["labels"]) if lab != -100] == ["w7", "w8", "</s>", "w12", "w13", "w14",
                                                                            "w15", "</s>"]


# --------------------------------------------------------------------------- the saved chat format
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from harness.models import build_assets

    assets = build_assets(tmp_path_factory.mktemp("saved"))
    conversation = chat_messages(CHAT_TRAIN[1])
    tok = build_tokenizer()
    return assets.model_dir, conversation, encode_chat(tok, conversation)["input_ids"]


def _copy(model_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(model_dir, tmp_path / "saved"))


def test_saved_format_passes_on_the_training_tokenizer(saved, tmp_path):
    model_dir, conversation, ids = saved
    assert_saved_format(_copy(model_dir, tmp_path), model_dir, conversation, ids)


def _no_tokenizer(d):
    (d / "tokenizer.json").unlink()


def _no_template(d):
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def _other_template(d):
    (d / "chat_template.jinja").write_text((d / "chat_template.jinja").read_text().replace("{{ bos_token }}", ""))


def _pad_changed(d):
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["pad_token"] = "</s>"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def _eos_without_turn_end(d):
    cfg = json.loads((d / "generation_config.json").read_text())
    cfg["eos_token_id"] = [4]
    (d / "generation_config.json").write_text(json.dumps(cfg))


def _no_generation_config(d):
    (d / "generation_config.json").unlink()


@pytest.mark.parametrize("break_it, message", [
    (_no_tokenizer, "holds no tokenizer (['tokenizer.json'] missing)"),
    (_no_template, "the saved tokenizer has no chat template"),
    (_other_template, "apply_chat_template of the training conversation gives '<|user|> w6"),
    (_pad_changed, "pad_token is '</s>' (id 3), the base tokenizer's is '<pad>' (id 0)"),
    (_eos_without_turn_end, "has eos_token_id [4], which lacks the template's turn end '</s>' (id 3)"),
    (_no_generation_config, "a full model without generation_config.json"),
])
def test_saved_format_failures_are_named(saved, tmp_path, break_it, message):
    model_dir, conversation, ids = saved
    directory = _copy(model_dir, tmp_path)
    break_it(directory)
    with pytest.raises(OracleFailure, match="saved-template") as info:
        assert_saved_format(directory, model_dir, conversation, ids)
    assert message in str(info.value)
