"""Tiny model, tokenizer and dataset factories: local, deterministic, loadable offline."""

from __future__ import annotations

import json

import pytest

from harness.models import SEQ_WORDS, build_assets, build_tokenizer, read_jsonl


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("a"), seed=0)


def test_same_seed_same_weights(tmp_path, assets):
    again = build_assets(tmp_path / "again", seed=0)
    assert (assets.model_dir / "model.safetensors").read_bytes() == (again.model_dir / "model.safetensors").read_bytes()
    other = build_assets(tmp_path / "other", seed=1)
    assert (assets.model_dir / "model.safetensors").read_bytes() != (other.model_dir / "model.safetensors").read_bytes()


def test_loads_offline_and_tokenizer_round_trips(assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir, local_files_only=True)
    ids = tok("w1 w2 w3")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == "w1 w2 w3"
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2
    chat = tok.apply_chat_template([{"role": "user", "content": "w1"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s><|user|> w1 <|assistant|> "


def test_qwen2_variant(tmp_path):
    a = build_assets(tmp_path, arch="qwen2")
    assert json.loads((a.model_dir / "config.json").read_text())["model_type"] == "qwen2"


def test_datasets_equal_length_and_split(assets):
    tok = build_tokenizer()
    train = read_jsonl(assets.dataset_dir / "train.jsonl")
    evals = read_jsonl(assets.dataset_dir / "eval.jsonl")
    assert len(train) == 48 and len(evals) == 16 and read_jsonl(assets.dataset_dir / "prompts.jsonl")
    lengths = {len(tok(r["text"])["input_ids"]) for r in train + evals}
    assert lengths == {SEQ_WORDS + 1}
    assert not {r["text"] for r in train} & {r["text"] for r in evals}


def test_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        build_assets(tmp_path, arch="gpt9")


def test_preferences_teach_the_count_and_bad_rows_name_line_and_key(assets, tmp_path):
    """Each DPO row's chosen completion continues the prompt's count (what train.jsonl teaches), the rejected one
    counts down: a preference the model can learn. A row without ``chosen`` is a ConfigError naming file, line, key."""
    from harness.errors import ConfigError, MissingFileError
    from harness.models import write_jsonl
    from harness.task import preferences

    rows = preferences(assets.dataset_dir)
    assert len(rows) == 8
    for row in rows:
        last = int(row["prompt"].split()[-1][1:])
        assert row["chosen"].split()[0] == f"w{(last + 1) % 24}"
        assert row["rejected"].split()[0] == f"w{(last - 1) % 24}"
    write_jsonl(tmp_path / "preferences.jsonl", [rows[0], {"prompt": "w1", "rejected": "w0"}])
    with pytest.raises(ConfigError, match=r"preferences.jsonl: key 'line 2.chosen': expected a non-empty string"):
        preferences(tmp_path)
    with pytest.raises(MissingFileError, match="preferences.jsonl"):
        preferences(tmp_path / "nowhere")
