"""Chat data as trained and as served: every training sample teaches exactly its assistant turns through their turn
end (label masks), and the saved template and tokenizer render the training conversation as it was trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .failure import OracleFailure
from .saves import _eos_ids


def _spans(positions: list[int]) -> list[list[int]]:
    """Contiguous runs of sorted positions."""
    out: list[list[int]] = []
    for p in positions:
        if out and p == out[-1][-1] + 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def assert_batches_teach_assistant(batches: Iterable[Mapping[str, Any]], dataset_dir: Path, tokenizer_dir: Path, *,
                                   turn_end: str | None = None, seed: str = "labels") -> int:
    """Every training sample teaches exactly its assistant turns, each through its turn end, and nothing else.

    ``batches``: the collated batches a framework trains on (``Adapter.training_batches``). Per sample (row of a
    batch): no label on a padding position (attention mask 0); at least one supervised token (label != -100);
    every label equal to the input token at its position (labels aligned with the inputs; the model shifts them);
    at most one BOS among the attended tokens; the supervised positions form one span per assistant turn, and the
    spans, less their last token, are the token ids of one ``train.jsonl`` row's assistant contents, in order, and each
    span's last token is the turn end (``turn_end``, default the tokenizer's EOS). One epoch covers every row.
    Returns the number of samples checked."""
    from transformers import AutoTokenizer

    from ..models import read_jsonl
    from ..task import chat_messages

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    path = Path(dataset_dir) / "train.jsonl"
    rows = read_jsonl(path)
    expected: dict[tuple[tuple[int, ...], ...], int] = {}
    for i, row in enumerate(rows):
        turns = [m["content"] for m in chat_messages(row, path, i) if m["role"] == "assistant"]
        expected[tuple(tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in turns)] = i
    end_token = turn_end or tok.eos_token
    end_id = tok.convert_tokens_to_ids(end_token)
    bos_id = tok.bos_token_id

    def show(ids: Iterable[int]) -> str:
        return " ".join(tok.convert_ids_to_tokens(list(ids)))

    seen: set[int] = set()
    checked = 0
    for b, batch in enumerate(batches):
        missing = [k for k in ("input_ids", "labels", "attention_mask") if batch.get(k) is None]
        if missing:
            raise OracleFailure(seed, f"batch {b} has no {missing}: cannot tell padding from tokens")
        for r, (ids, labels, mask) in enumerate(zip(batch["input_ids"], batch["labels"], batch["attention_mask"])):
            ids, labels, mask = list(ids), list(labels), list(mask)
            real = [i for i, m in enumerate(mask) if m]
            where = f"batch {b} sample {r} ({show(ids[i] for i in real)!r})"
            if not (len(ids) == len(labels) == len(mask)):
                raise OracleFailure(seed, f"{where}: input_ids, labels and attention_mask have lengths "
                                          f"{len(ids)}, {len(labels)}, {len(mask)}")
            _assert_mask_is_the_padding(ids, mask, tok.pad_token_id, where, show, seed)
            padded = [i for i, m in enumerate(mask) if not m and labels[i] != -100]
            if padded:
                raise OracleFailure(seed, f"{where}: {len(padded)} padding positions (attention mask 0) carry a label, "
                                          f"first at {padded[0]}: label {show([labels[padded[0]]])!r}; expected -100 on "
                                          f"padding: the loss trains the model to predict padding")
            supervised = [i for i in real if labels[i] != -100]
            if not supervised:
                raise OracleFailure(seed, f"{where}: every label is -100: the sample teaches nothing (trl #1820/#980: "
                                          f"the response template was not found in the tokenised sample)")
            shifted = [i for i in supervised if labels[i] != ids[i]]
            if shifted:
                i = shifted[0]
                raise OracleFailure(seed, f"{where}: the label at position {i} is {show([labels[i]])!r} but the input "
                                          f"there is {show([ids[i]])!r} ({len(shifted)} such positions): labels are not "
                                          f"aligned with the inputs (a mask shifted by the padding: trl PR #550)")
            bos = sum(ids[i] == bos_id for i in real) if bos_id is not None else 0
            if bos > 1:
                raise OracleFailure(seed, f"{where}: {bos} BOS tokens {tok.bos_token!r}; expected at most one (a template "
                                          f"that writes the BOS, tokenised with special tokens added again: open-r1 "
                                          f"PR #462, DeepSeek-R1 #151)")
            spans = [[ids[i] for i in span] for span in _spans(supervised)]
            contents = tuple(tuple(s[:-1]) if s[-1] == end_id else tuple(s) for s in spans)
            row = expected.get(contents)
            if row is None:
                wanted = min(expected, key=lambda k: abs(len(k) - len(contents)))
                raise OracleFailure(seed, f"{where}: supervised spans {[show(s) for s in spans]} are not the assistant "
                                          f"turns of any training sample (each turn's content, then {end_token!r}; e.g. "
                                          f"{[show(t) + ' ' + end_token for t in wanted]}): a prompt, user turn or header "
                                          f"is trained on, or an assistant turn is masked")
            unended = [show(s) for s in spans if s[-1] != end_id]
            if unended:
                raise OracleFailure(seed, f"{where}: assistant turn {unended[0]!r} is supervised without its turn end: "
                                          f"{end_token!r} carries label -100 ({len(unended)} of {len(spans)} turns); the "
                                          f"model never learns to stop (trl #1623: a pad token equal to the EOS masks "
                                          f"the EOS)")
            seen.add(row)
            checked += 1
    _assert_every_row_seen(seen, len(rows), checked, seed)
    return checked


def _assert_every_row_seen(seen: set[int], n_rows: int, checked: int, seed: str) -> None:
    """One epoch of training batches holds every ``train.jsonl`` row (``seen``: the rows matched, 0-based)."""
    unseen = sorted(set(range(n_rows)) - seen)
    if unseen:
        raise OracleFailure(seed, f"one epoch of training batches never holds train.jsonl rows {[u + 1 for u in unseen]} "
                                  f"(of {n_rows}; {checked} samples seen): dropped or truncated away")


def _assert_mask_is_the_padding(ids: list[int], mask: list[int], pad_id: int | None, where: str, show, seed: str
                                ) -> None:
    """Attention mask 0 exactly on padding where it matters: the pad run before a left-padded sample (a causal model's
    tokens attend to it: a collator that drops the mask trains on another context than it serves) is masked, and no
    token of the sample is. (Trailing pads with mask 1 change nothing a causal model computes, so they pass.) The pad
    id is the one at the masked positions, else the tokenizer's."""
    zeros = [i for i, m in enumerate(mask) if not m]
    at_zeros = {ids[i] for i in zeros}
    pad = next(iter(at_zeros)) if len(at_zeros) == 1 else pad_id
    if pad is None:
        return
    lead = next((i for i, t in enumerate(ids) if t != pad), len(ids))
    trail = next((i for i, t in enumerate(reversed(ids)) if t != pad), len(ids))
    inside = [i for i in zeros if lead <= i < len(ids) - trail]
    if inside:
        raise OracleFailure(seed, f"{where}: attention mask 0 on {len(inside)} tokens of the sample, first at position "
                                  f"{inside[0]} ({show([ids[inside[0]]])!r}): the model does not see them")
    attended = [i for i in range(lead) if mask[i]]
    if attended and lead < len(ids):
        raise OracleFailure(seed, f"{where}: the {lead} pad tokens before the sample carry attention mask 1 at "
                                  f"{len(attended)} positions: every token of the sample attends to padding (a collator "
                                  f"that drops or misaligns the attention mask of left-padded rows)")


def training_sample_of(batches: Iterable[Mapping[str, Any]], conversation: list[Mapping[str, str]], tokenizer_dir: Path,
                       *, seed: str = "template") -> list[int]:
    """The attended token ids of the training sample that holds ``conversation`` (every message's content tokens in
    order), from a framework's collated batches (``Adapter.training_batches``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    words = [t for m in conversation for t in tok(m["content"], add_special_tokens=False)["input_ids"]]
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            real = [t for t, m in zip(ids, mask) if m]
            it = iter(real)
            if all(any(t == w for t in it) for w in words):
                return real
    raise OracleFailure(seed, f"no training sample holds the conversation {[m['content'] for m in conversation]}")


def assert_saved_format(directory: Path, base_dir: Path, conversation: list[Mapping[str, str]],
                        training_ids: list[int], *, reply_turns: str = "every", seed: str = "template") -> None:
    """A saved directory carries the format its run trained in: its tokenizer is on disk with a chat template,
    ``apply_chat_template(conversation)`` gives exactly ``training_ids`` (the tokens the run trained on), the
    generation config that serves it (the directory's, else — an adapter — its base's) stops at the template's turn
    end, and every special token of the base tokenizer keeps its id. ``reply_turns="last"``: the generation prompt is
    checked before the final assistant turn only (a thinking template renders history turns otherwise than the turn
    being answered, so only the last one is served as it was trained)."""
    from transformers import AutoTokenizer, GenerationConfig

    from ..layout import TOKENIZER_FILES, adapter_base, is_adapter_dir
    from ..task import template_turn_end

    directory = Path(directory)
    label = directory.name
    absent = [n for n in TOKENIZER_FILES if not (directory / n).is_file()]
    tok_dir = directory
    if absent and is_adapter_dir(directory):  # an adapter without a tokenizer is served with its base's
        tok_dir, label = adapter_base(directory), f"{directory.name} (no tokenizer of its own: its base's)"
        absent = [n for n in TOKENIZER_FILES if not (Path(tok_dir) / n).is_file()]
    if absent:
        raise OracleFailure(seed, f"{label} holds no tokenizer ({absent} missing): it cannot be served in the format "
                                  f"it was trained in")
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    if not tok.chat_template:
        raise OracleFailure(seed, f"{label}: the saved tokenizer has no chat template (no chat_template.jinja, none in "
                                  f"tokenizer_config.json): a server falls back to a default format the model never "
                                  f"saw (LLaMA-Factory #5836 / #5904, ms-swift #2831)")
    def render(messages, **kwargs) -> list[int]:
        ids = tok.apply_chat_template(list(messages), tokenize=True, **kwargs)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def show(ids):
        return " ".join(tok.convert_ids_to_tokens(list(ids)))

    served = render(conversation)
    if served != list(training_ids):
        raise OracleFailure(seed, f"{label}: apply_chat_template of the training conversation gives {show(served)!r}, "
                                  f"but the run trained on {show(training_ids)!r}: the saved template is not the one "
                                  f"the model was trained with (LLaMA-Factory #7785 / #5476, Qwen3-VL #1488)")
    # served as a server prompts it: each prefix that ends before an assistant turn, with the generation prompt, must
    # be exactly what the model saw before that turn's reply, so the trained ids go on with the reply itself (a
    # template that lost its generation prompt renders the training conversation unchanged, and serves prompts the
    # model never saw)
    trained = list(training_ids)
    last = max(i for i, m in enumerate(conversation) if m.get("role") == "assistant")
    for i, message in enumerate(conversation):
        if message.get("role") != "assistant" or (reply_turns == "last" and i != last):
            continue
        prompt = render(conversation[:i], add_generation_prompt=True)
        reply = tok(message["content"], add_special_tokens=False)["input_ids"]
        if prompt + reply != trained[:len(prompt) + len(reply)]:
            start = len(render(conversation[:i]))  # where the trained reply is: the first match after the prefix
            at = next((j for j in range(start, len(trained)) if trained[j:j + len(reply)] == reply), len(trained))
            raise OracleFailure(seed, f"{label}: apply_chat_template of the {i} messages before assistant turn "
                                      f"{sum(m.get('role') == 'assistant' for m in conversation[:i]) + 1} with "
                                      f"add_generation_prompt=True gives {show(prompt)!r}, but the run trained the "
                                      f"reply {show(reply)!r} after {show(trained[:at])!r}: a server prompting the saved "
                                      f"model renders a prompt the model never saw before a reply")
    base = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    for token, want_id in sorted(base.get_added_vocab().items(), key=lambda kv: kv[1]):
        got_id = tok.convert_tokens_to_ids(token)
        if got_id != want_id:
            raise OracleFailure(seed, f"{label}: the saved tokenizer encodes {token!r} as id {got_id}, the base "
                                      f"tokenizer (and the run) as {want_id}: a server encodes the template's tokens "
                                      f"to other embeddings than the ones trained")
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        want, got = getattr(base, attr), getattr(tok, attr)
        if want is not None and (got != want or tok.convert_tokens_to_ids(want) != base.convert_tokens_to_ids(want)):
            raise OracleFailure(seed, f"{label}: {attr} is {got!r} (id {getattr(tok, attr + '_id')}), the base "
                                      f"tokenizer's is {want!r} (id {getattr(base, attr + '_id')}): special-token ids "
                                      f"changed between training base and saved model")
    end = template_turn_end(tok)
    config_dir = directory if (directory / "generation_config.json").is_file() else (
        adapter_base(directory) if is_adapter_dir(directory) else None)
    if config_dir is None or not (Path(config_dir) / "generation_config.json").is_file():
        raise OracleFailure(seed, f"{label}: a full model without generation_config.json: generation stops only at "
                                  f"config.json's eos, not at the template's turn end")
    eos = _eos_ids(GenerationConfig.from_pretrained(str(config_dir)).eos_token_id)
    if end is not None and end not in eos:
        raise OracleFailure(seed, f"{label}: generation_config.json ({Path(config_dir).name}) has eos_token_id {eos}, "
                                  f"which lacks the template's turn end {tok.convert_ids_to_tokens(end)!r} (id {end}): "
                                  f"served generation never stops at the end of a turn (open-r1 PR #663)")


def _template_spans(tok, messages: list[Mapping[str, str]]) -> tuple[tuple[int, ...], ...]:
    """The assistant token spans a chat template marks with ``{% generation %}`` for ``messages`` (its own rendering)."""
    out = tok.apply_chat_template(list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    return tuple(tuple(ids[i] for i in span) for span in _spans([i for i, m in enumerate(mask) if m]))


def assert_batches_follow_template(batches: Iterable[Mapping[str, Any]], dataset_dir: Path, tokenizer_dir: Path, *,
                                   seed: str = "thinking") -> int:
    """Every training sample supervises exactly the assistant tokens the model's own chat template marks
    (``{% generation %}``) for its conversation: with a thinking template, the history turns' answers without their
    reasoning and the final turn's reasoning and answer, each through its turn end; nothing else, no label on padding,
    every ``train.jsonl`` row in one epoch. A framework that re-renders the chat its own way (reasoning kept in the
    history, or stripped "by fixed message positions": hiyouga/LlamaFactory PR #10773) trains another format than the
    one the model is served in. Returns the number of samples checked."""
    from transformers import AutoTokenizer

    from ..models import read_jsonl
    from ..task import chat_messages

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    path = Path(dataset_dir) / "train.jsonl"
    rows = [chat_messages(row, path, i) for i, row in enumerate(read_jsonl(path))]
    expected = [_template_spans(tok, messages) for messages in rows]
    users = [[t for m in messages if m["role"] == "user" for t in tok(m["content"], add_special_tokens=False)["input_ids"]]
             for messages in rows]

    def show(ids: Iterable[int]) -> str:
        return " ".join(tok.convert_ids_to_tokens(list(ids)))

    seen: set[int] = set()
    checked = 0
    for b, batch in enumerate(batches):
        for r, (ids, labels, mask) in enumerate(zip(batch["input_ids"], batch["labels"], batch["attention_mask"])):
            ids, labels, mask = list(ids), list(labels), list(mask)
            real = [i for i, m in enumerate(mask) if m]
            where = f"batch {b} sample {r} ({show(ids[i] for i in real)!r})"
            _assert_mask_is_the_padding(ids, mask, tok.pad_token_id, where, show, seed)
            attended = [ids[i] for i in real]
            row = next((k for k, words in enumerate(users) if _in_order(words, attended)), None)
            if row is None:
                raise OracleFailure(seed, f"{where}: holds the user turns of no train.jsonl row")
            spans = tuple(tuple(ids[i] for i in span) for span in _spans([i for i in range(len(ids))
                                                                          if labels[i] != -100]))
            if spans != expected[row]:
                raise OracleFailure(seed, f"{where}: supervised {[show(s) for s in spans]}, but the model's chat "
                                          f"template marks {[show(s) for s in expected[row]]} as the assistant turns of "
                                          f"train.jsonl row {row + 1}: the run trains another rendering of the chat "
                                          f"(history reasoning kept or dropped, or the final reasoning unsupervised) "
                                          f"than the template serves")
            seen.add(row)
            checked += 1
    _assert_every_row_seen(seen, len(rows), checked, seed)
    return checked


def _in_order(words: list[int], ids: list[int]) -> bool:
    it = iter(ids)
    return all(any(t == w for t in it) for w in words)


def assert_thinking_modes_kept(directory: Path, base_dir: Path, conversation: list[Mapping[str, str]], *,
                               seed: str = "thinking") -> None:
    """The saved tokenizer prompts the final reply of ``conversation`` in both thinking modes exactly as the model's own
    template does (``add_generation_prompt=True`` with ``enable_thinking`` true and false: Qwen3's template writes an
    empty think block when thinking is off). A framework that saves its own rendering in place of the model's template
    serves one mode for both (hiyouga/LlamaFactory #9092: ``qwen3_nothink`` identical to ``qwen3``)."""
    from transformers import AutoTokenizer

    from ..layout import TOKENIZER_FILES, adapter_base, is_adapter_dir

    directory = Path(directory)
    tok_dir = directory
    if is_adapter_dir(directory) and not all((directory / n).is_file() for n in TOKENIZER_FILES):
        tok_dir = adapter_base(directory)
    saved = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    base = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    last = max(i for i, m in enumerate(conversation) if m.get("role") == "assistant")
    for thinking in (True, False):
        kwargs = dict(tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
        got = saved.apply_chat_template(list(conversation[:last]), **kwargs)
        want = base.apply_chat_template(list(conversation[:last]), **kwargs)
        if got != want:
            raise OracleFailure(seed, f"{directory.name}: with enable_thinking={thinking} the saved template prompts "
                                      f"{got!r}, the model's own template {want!r}: the saved model is served in "
                                      f"another thinking mode than the one asked for")
