"""From a user's settings to the scenario runs that answer for them.

Each :class:`Question` is one thing a user's config makes possible to break silently: the settings it answers
for (in the user's own words), how they were mapped onto the tiny task, the pytest ``-k`` expression selecting
the scenario tests that judge it, and what a red answer means and how to avoid it.

The mapping keeps what the failure depends on, not the numbers: for the eval / save cadence, the eval:save ratio
(reduced, or approximated by small integers with the same alignment: whether every save falls on an evaluation,
every evaluation on a save, or neither), ``save_total_limit`` (at most 3; the tiny run makes more saves than the
limit, so rotation happens) and ``load_best_model_at_end``; for gradient accumulation, whether the micro-batch is
a single sample; for quantisation, the kind. Settings the scenarios are sensitive to but that the tiny task cannot
reproduce are said to be not checked, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .configs import UserConfig

__all__ = ["Question", "Plan", "plan", "tiny_cadence", "EPOCH_STEPS", "MAX_TINY_STEPS"]

#: the tiny epoch when a cadence is given per epoch (axolotl's evals_per_epoch / saves_per_epoch, *_strategy epoch):
#: 12 steps divide by 1, 2, 3, 4, 6 and 12
EPOCH_STEPS = 12
#: the longest tiny cadence run (40 full-training steps of the tiny model take about 2 s on the reference)
MAX_TINY_STEPS = 40
_MAX_EVAL, _MAX_SAVE, _MAX_LIMIT = 6, 12, 3
#: formats whose eval_strategy defaults to transformers' "no" (axolotl and ms-swift evaluate when given a cadence)
_EVAL_OFF_BY_DEFAULT = ("transformers", "llamafactory")
#: what those formats save at when the config names no save cadence (transformers' TrainingArguments default)
HF_DEFAULT_SAVE_STEPS = 500


@dataclass(frozen=True)
class Question:
    topic: str  # what must hold, in one line
    cited: str  # the user's settings it answers for, as written
    mapped: str  # the tiny arrangement, in words
    keyword: str  # pytest -k expression of its tests
    modules: tuple[str, ...]  # scenario modules (file names) of its tests
    functions: tuple[str, ...] = ()  # test functions (empty: every test of the modules the keyword selects)
    variant: str | None = None  # a parameter id its tests must carry
    failure: str = ""  # what a FAIL means for the user's run
    fix: str = ""
    options: dict[str, str] = field(default_factory=dict)  # adapter options this question's runs need
    #: (a phrase of the failure, what it means instead): a red answer caused by something other than the setting
    other_causes: tuple[tuple[str, str], ...] = ()

    def advice(self, reason: str) -> tuple[str, str]:
        """(what the failure means, what to do) for one failure's head line."""
        for phrase, meaning in self.other_causes:
            if phrase in reason:
                return meaning, "compare the framework's logged value with a re-evaluation by hand before trusting it"
        return self.failure, self.fix

    def owns(self, nodeid: str) -> bool:
        """Whether a test (its node id) answers this question."""
        path, _, rest = nodeid.partition("::")
        name, _, params = rest.partition("[")
        if path.rsplit("/", 1)[-1] not in self.modules:
            return False
        if self.functions and name not in self.functions:
            return False
        return self.variant is None or self.variant in params.rstrip("]").split("-")


@dataclass
class Plan:
    questions: list[Question]
    user_config: dict  # section -> values, for --ft-user-config
    not_checked: list[str]  # one line each: a recognised setting the tiny task cannot reproduce, and why
    unchecked_keys: list[str]  # keys no scenario is sensitive to (as written)
    framework: str = ""  # the config's framework: the adapter its questions' options belong to

    @property
    def keyword(self) -> str:
        return " or ".join(f"({q.keyword})" for q in self.questions)

    @property
    def options(self) -> dict[str, str]:
        return {k: v for q in self.questions for k, v in q.options.items()}


def _per_epoch(count: int) -> int:
    return max(1, round(EPOCH_STEPS / max(1, count)))


def tiny_cadence(eval_steps: int, save_steps: int) -> tuple[int, int]:
    """Small (eval, save) with the user's ratio and alignment: 50/200 -> (1, 4), 30/70 -> (3, 7), 7/1000 -> (2, 11)."""
    g = math.gcd(eval_steps, save_steps)
    e, s = eval_steps // g, save_steps // g
    if e <= _MAX_EVAL and s <= _MAX_SAVE:
        return e, s
    if save_steps % eval_steps == 0:  # every save on an evaluation: keep that
        return 1, _MAX_SAVE
    if eval_steps % save_steps == 0:  # every evaluation on a save
        return _MAX_EVAL, 1
    ratio = save_steps / eval_steps  # neither: the nearest small pair that is misaligned both ways
    pairs = [(a, b) for a in range(2, _MAX_EVAL + 1) for b in range(2, _MAX_SAVE + 1) if b % a and a % b]
    return min(pairs, key=lambda p: (abs(math.log(p[1] / p[0]) - math.log(ratio)), p))


def _cadence_steps(config: UserConfig, what: str) -> tuple[int | None, str | None]:
    """(steps, None) of the eval or save cadence, or (None, why not checked)."""
    strategy = config.get(f"{what}_strategy")
    strategy = None if strategy is None else str(strategy).lower()
    per_epoch = config.get(f"{what}s_per_epoch")
    steps = config.get(f"{what}_steps")
    if strategy == "no":
        return None, f"{config.cite(f'{what}_strategy')}: no {'evaluation' if what == 'eval' else 'saves'}"
    if what == "eval" and strategy is None and config.framework in _EVAL_OFF_BY_DEFAULT and config.has("eval_steps"):
        return None, (f"{config.cite('eval_steps')} without eval_strategy: {config.framework}'s default eval_strategy "
                      "is 'no' (transformers TrainingArguments), so nothing is evaluated")
    if strategy == "best":
        return None, (f"{config.cite('save_strategy')}: a save at every new best; no adapter maps it yet, so the "
                      "tiny task cannot run it")
    if strategy == "epoch":
        return EPOCH_STEPS, None
    if per_epoch is not None:
        return _per_epoch(per_epoch), None
    if isinstance(steps, float):
        return None, f"{config.cite(f'{what}_steps')}: a ratio of the total steps, which the config does not fix"
    if isinstance(steps, int) and steps > 0:
        return steps, None
    if what == "save" and steps is None and config.framework in _EVAL_OFF_BY_DEFAULT:
        return HF_DEFAULT_SAVE_STEPS, None  # TrainingArguments' save_strategy "steps", save_steps 500
    return None, None


def _cadence(config: UserConfig, not_checked: list[str]) -> tuple[Question, dict] | None:
    eval_steps, why_eval = _cadence_steps(config, "eval")
    save_steps, why_save = _cadence_steps(config, "save")
    for why in (why_eval, why_save):
        if why:
            not_checked.append(why)
    if eval_steps is None or save_steps is None:
        if (eval_steps or save_steps) and not (why_eval or why_save):
            missing = "eval_steps" if eval_steps is None else "save_steps"
            not_checked.append(f"the best-checkpoint cadence: the config sets no {missing}")
        return None
    e, s = tiny_cadence(eval_steps, save_steps)
    limit = int(config.get("save_total_limit") or 0)
    tiny_limit = min(limit, _MAX_LIMIT) if limit > 0 else 0
    load_best = bool(config.get("load_best_model_at_end", False))
    saves = (tiny_limit or 1) + 2
    steps = min(MAX_TINY_STEPS, max(4 * e, s * saves, 12))
    if steps % e and steps - steps % e >= 2 * e:  # end on an evaluation where that keeps two of them
        steps -= steps % e
    if tiny_limit and steps // s <= tiny_limit:  # a slow save cadence: lower the limit so that rotation still happens
        tiny_limit = max(1, steps // s - 1)
    values = {"eval_steps": e, "save_steps": s, "save_total_limit": tiny_limit, "max_steps": steps,
              "load_best_model_at_end": load_best}
    cited = config.cite("eval_strategy", "eval_steps", "evals_per_epoch", "save_strategy", "save_steps",
                        "saves_per_epoch", "save_total_limit", "load_best_model_at_end")
    if not (config.has("save_steps") or config.has("save_strategy") or config.has("saves_per_epoch")):
        cited += f" / save_steps {save_steps} (the default)"
    mapped = (f"eval every {e} step(s), save every {s}, save_total_limit {tiny_limit or 'none'}, {steps} steps"
              + (", load_best_model_at_end" if load_best else "") + " (full fine-tune of the tiny model)")
    metric = config.get("metric_for_best_model")
    if metric not in (None, "loss", "eval_loss"):
        not_checked.append(f"{config.cite('metric_for_best_model')}: the tiny task logs eval_loss only; the cadence "
                           "is judged on eval_loss")
    every_eval_saved = e % s == 0
    fix = ("keep save_total_limit >= 2 so that the best and the newest save can both survive, or upgrade"
           if every_eval_saved else
           "save at every evaluation (save_steps = eval_steps), or save_strategy: best where the framework has it")
    question = Question(
        topic="the best evaluated step is saved, survives rotation and reloads to its logged eval_loss"
              + ("; the final model is the best" if load_best else ""),
        cited=cited, mapped=mapped, keyword="test_your_cadence_keeps_best", modules=("test_best_checkpoint.py",),
        functions=("test_your_cadence_keeps_best",),
        failure="the best model of a run with this cadence is lost or mislabelled", fix=fix,
        other_causes=(("no save reproduces the eval_loss",
                       "not judged on the cadence: the framework's logged eval_loss is not what its saves re-evaluate "
                       "to (an evaluation on other data, or the adapter's evaluate differs from the framework's)"),))
    return question, values


def plan(config: UserConfig) -> Plan:
    """The questions ``config`` raises, the tiny arrangement they run, and what stays unchecked."""
    not_checked: list[str] = []
    questions: list[Question] = []
    user: dict = {}
    cadence = _cadence(config, not_checked)
    if cadence is not None:
        questions.append(cadence[0])
        user["cadence"] = cadence[1]
    ga = int(config.get("gradient_accumulation_steps") or 1)
    if ga > 1:
        batch = int(config.get("per_device_train_batch_size") or 8)
        split = "1x4" if batch == 1 else "2x2"
        questions.append(Question(
            topic="gradient accumulation trains what one large batch trains (loss, grad norm, learning rate, weights)",
            cited=config.cite("per_device_train_batch_size", "gradient_accumulation_steps"),
            mapped=f"batch {split.replace('x', ' x accumulation ')} against batch 4 x 1, samples of lengths differing "
                   f"4x, the epoch ending in an incomplete window, linear warm-up",
            keyword=f"test_accumulation_equals_large_batch and {split}", modules=("test_grad_accumulation.py",),
            functions=("test_accumulation_equals_large_batch",), variant=split,
            failure="accumulated steps weight tokens or windows differently from the batch they stand for",
            fix="upgrade to a release where this passes, or set gradient_accumulation_steps: 1 with a larger batch"))
    if config.get("packing"):
        questions.append(Question(
            topic="packed training equals padded training (no attention or loss across packed samples)",
            cited=config.cite("packing"), mapped="three steps of packed against padded rows, linear warm-up",
            keyword="test_packing", modules=("test_packing.py",),
            failure="packed samples see each other, or their labels cross a boundary",
            fix="turn packing off, or use the framework's boundary-aware packing (neat_packing, flash-attention "
                "varlen)"))
    resuming = config.get("resume_from_checkpoint") is not None or config.get("auto_resume")
    if resuming:
        questions.append(Question(
            topic="a resumed run trains exactly what the uninterrupted run trains",
            cited=config.cite("resume_from_checkpoint", "auto_resume"),
            mapped="stopped at checkpoint 2 or 4 of 6 (LoRA and full), resumed from it, compared step by step",
            keyword="test_resume_equivalence and not grpo", modules=("test_resume_equivalence.py",),
            failure="the resumed run repeats or skips samples, or restarts its optimizer, schedule or RNG",
            fix="resume from a checkpoint with its optimizer.pt / scheduler.pt / rng_state; upgrade if this fails"))
    quant = config.get("quantization")
    if quant in ("nf4", "int8"):
        questions.append(Question(
            topic=f"LoRA on a {quant} base resumes exactly and merges into the model it trained",
            cited=config.cite("quantization", "train_type"),
            mapped=f"LoRA on the tiny model quantised {quant} (bitsandbytes), resumed at steps 2 and 4, then merged",
            keyword=f"(test_quantized_lora_resume or test_lora_merge) and {quant}",
            modules=("test_quantized_lora_resume.py", "test_lora_merge.py"), variant=quant,
            failure="the resumed adapter or the merged model is not what training produced on the quantised base",
            fix="resume and merge on the same quantisation as training; merge into the unquantised base"))
    elif quant is not None:
        not_checked.append(f"{config.cite('quantization')}: the tiny task quantises with nf4 and int8 only")
    if config.framework == "swift" and (config.get("load_args") or resuming):
        questions.append(Question(
            topic="values on the command line beat the args.json saved beside a checkpoint (seed 000)",
            cited=config.cite("load_args", "resume_from_checkpoint"),
            mapped="train on a saved full fine-tune's directory with other values on the command line"
                   + (" (load_args true)" if config.get("load_args") else ""),
            keyword="test_args_precedence", modules=("test_args_precedence.py",),
            failure="the run trains with the saved values, not yours",
            fix="pass --load_args false, or check the logged args.json of the new run",
            options={"load_args": "true"} if config.get("load_args") else {}))
    targets = config.get("lora_target")
    if targets and "all-linear" in targets and config.get("train_type", "lora") in ("lora", "qlora"):
        questions.append(Question(
            topic="on a mixture-of-experts model, all-linear LoRA reaches every expert and the router",
            cited=config.cite("lora_target"), mapped="LoRA all-linear on a tiny qwen3_moe with fused 3-D experts",
            keyword="test_moe_lora", modules=("test_moe_lora.py",),
            failure="an MoE model's experts are never trained (only the attention's linears are)",
            fix="name the expert parameters explicitly (target_parameters), or upgrade; dense models are unaffected"))
    return Plan(questions, user, not_checked, list(config.unchecked), config.framework)
