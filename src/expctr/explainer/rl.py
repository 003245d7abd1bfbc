"""The RL stage runner shared by the LC and the IC stage of every ExpCTR round: GRPO on a LoRA adapter.

Why GRPO (TRL's `GRPOTrainer`) although the paper used PPO:
- no value model: PPO trains a critic next to the policy (a second LM-sized head to fit and keep in memory);
  GRPO's baseline is the mean reward of the other completions for the same prompt;
- our rewards are one scalar per finished explanation (the judge's / the text-CTR model's probability of the
  true label), exactly what group-relative advantages are built for: no per-token credit assignment is needed;
- it is TRL's maintained path (PEFT, logging, seeds); `PPOTrainer` lives under `trl.experimental` in current TRL.
Name clash: TRL's `num_iterations` (policy updates per generation batch) is not our outer `round`.

What one stage does (`run_rl_stage`): load the frozen base model (safetensors directory from
`expctr.llm.base_model.prepare_base_model`), wrap it in a fresh LoRA adapter (or continue a saved one, loaded
trainable), run `steps` GRPO steps, and save ONLY the adapter (`adapter_model.safetensors` +
`adapter_config.json`) atomically. The base weights are never written; peft freezes them in memory
(checked before training starts).

One step = `prompts_per_step` prompts x `num_generations` sampled completions, scored by the reward functions,
one optimizer update (per-device batch = generation batch = prompts_per_step * num_generations, so
`steps_per_generation` = 1 and TRL's "generation batch divisible by num_generations" holds by construction).

CPU profile (DESIGN.md "Traps"): `GRPOConfig` defaults to bf16=True and gradient checkpointing, ~8x slower on
this AVX2-only CPU; both come from `RLParams` (default off). The learning rate is constant: a stage is a handful
of steps, a decaying schedule would mostly train at a fraction of the configured rate.

Reward functions are plain callables `f(prompts, completions, **kwargs) -> list[float | None]`; TRL passes
every dataset column except `prompt` as a kwarg list aligned with `completions` (see
`build_prompt_dataset`), plus `completion_ids`, `trainer_state`, `log_extra` and `log_metric`. Completions of a
conversational dataset arrive as `[{"role": "assistant", "content": text}]` (use `completion_text`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from expctr.config import LLMParams, RLParams
from expctr.errors import ExpCTRError
from expctr.io import atomic_path
from expctr.llm.base_model import load_model, load_tokenizer, set_threads
from expctr.llm.prompts import as_item, explainer_messages, fit_history

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_NAME = "default"

# ID feature columns the IC reward (text-augmented CTR model) needs, passed through as plain python values.
ID_COLUMNS = ("user_idx", "item_idx", "gender_idx", "age_idx", "occupation_idx", "decade_idx", "genre_idx",
              "hist_item_idx", "hist_click")
OPTIONAL_COLUMNS = ("user_id", "item_id")  # kept when present: readable logs
REQUIRED_COLUMNS = ("history", "target", "label", *ID_COLUMNS)

RewardFunc = Callable[..., list]


# ----------------------------------------------------------------------------------------------- prompts


def _item_dict(item) -> dict[str, Any]:
    it = as_item(item)
    return {"title": it.title, "year": it.year, "genres": list(it.genres), "liked": it.liked}


def _plain(value: Any) -> Any:
    """numpy / polars scalars and arrays -> python ints, floats and lists (what reward functions expect)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build_prompt_dataset(pairs, tokenizer, max_prompt_tokens: int):
    """A `datasets.Dataset` of conversational explainer prompts plus the columns reward functions read.

    `pairs`: a polars frame from `expctr.explainer.pairs` (`history`, `target`, `label`, ID feature columns).
    Columns of the result:
    - `prompt`: `explainer_messages(history, target)` with the history cut (oldest items first) by
      `fit_history` so the rendered prompt is at most `max_prompt_tokens` tokens (TRL 1.16 has no prompt
      truncation of its own, and cutting tokens would cut the chat template);
    - `history`: the items the explainer SAW (list of {title, year, genres, liked}), so a judge scores the
      explanation against the same context; `n_history_dropped` says how many older items the budget cut;
    - `target` ({title, year, genres, liked=None}), `label` (int 0/1);
    - the ID feature columns (`ID_COLUMNS`, plain python ints / lists), and `user_id` / `item_id` if present.
    TRL forwards every column except `prompt` to each reward function as a keyword list, one entry per
    completion (tested in tests/explainer/test_rl.py).
    """
    import datasets

    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.columns]
    if missing:
        raise ExpCTRError(f"pairs frame lacks column(s) {missing} needed by the RL stage (have {pairs.columns})")
    if pairs.height == 0:
        raise ExpCTRError("no pairs to build RL prompts from")
    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in pairs.columns]
    rows = []
    for row in pairs.select(keep).iter_rows(named=True):
        history = row["history"] or []
        target = as_item(row["target"])
        fitted = fit_history(tokenizer, history, target, max_prompt_tokens)
        out = {
            "prompt": explainer_messages(fitted, target),
            "history": [_item_dict(h) for h in fitted],
            "n_history_dropped": len(history) - len(fitted),
            "target": _item_dict(target),
            "label": int(row["label"]),
        }
        for c in (*ID_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in row)):
            out[c] = _plain(row[c])
        rows.append(out)
    return datasets.Dataset.from_list(rows)


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: conversational (`[{"role": "assistant", "content": ...}]`) or plain."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    return "".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")


# ----------------------------------------------------------------------------------------------- adapters


def lora_config(rl: RLParams):
    from peft import LoraConfig

    return LoraConfig(r=rl.lora_r, lora_alpha=rl.lora_alpha, lora_dropout=rl.lora_dropout,
                      target_modules=list(rl.target_modules), bias="none", task_type="CAUSAL_LM")


def adapter_weights(model) -> dict[str, Any]:
    """Detached CPU copies of the trainable LoRA tensors (name -> tensor), e.g. to compare before/after."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_weights(model) -> dict[str, Any]:
    """Detached CPU copies of every non-LoRA tensor (the frozen base), keyed by parameter name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" not in n}


def _check_only_lora_trainable(model) -> int:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    wrong = [n for n in trainable if "lora_" not in n]
    if wrong:
        raise ExpCTRError(f"base weights would be trained: {wrong[:5]} (only LoRA tensors may require grad)")
    if not trainable:
        raise ExpCTRError("the adapter has no trainable tensors (was it loaded with is_trainable=False?)")
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """The adapter directory, verified to hold exactly the adapter files."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise ExpCTRError(f"{d}: adapter directory not found")
    have = sorted(p.name for p in d.iterdir())
    missing = [f for f in ADAPTER_FILES if f not in have]
    if missing:
        raise ExpCTRError(f"{d}: not a LoRA adapter directory, missing {missing} (has {have})")
    return d


def save_adapter(model, out_dir: str | Path) -> Path:
    """Write ONLY `adapter_model.safetensors` + `adapter_config.json` of the "default" adapter, atomically.

    peft also writes a README model card and, with a reference adapter (beta > 0 on a continued adapter),
    a `ref/` subfolder: neither belongs in the artifact.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as staged:
        model.save_pretrained(str(staged), selected_adapters=[ADAPTER_NAME], safe_serialization=True)
        for p in staged.iterdir():
            if p.name not in ADAPTER_FILES:
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
        check_adapter_dir(staged)
    return out_dir


def load_explainer(base_model_dir: str | Path, adapter_dir: str | Path | None, llm: LLMParams,
                   merge: bool = True):
    """(model, tokenizer) for generation: the base model with the adapter, in eval mode.

    `merge=True` (default) folds the LoRA deltas into the in-memory weights (`merge_and_unload`): a plain
    causal LM, as fast as the base model and usable by any code that takes one (generation, judge, serving);
    the base directory on disk is untouched. `merge=False` keeps a `PeftModel` (e.g. to switch the adapter
    off). `adapter_dir=None` gives the base model itself (the round-0 / zero-shot explainer).
    """
    set_threads(llm.threads)
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype=llm.dtype, device=llm.device)
    if adapter_dir is None:
        return model, tokenizer
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(check_adapter_dir(adapter_dir)), is_trainable=False)
    model = peft_model.merge_and_unload() if merge else peft_model
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------- training


def grpo_config(rl: RLParams, llm: LLMParams, steps: int, seed: int, output_dir: str | Path,
                reward_weights: Sequence[float] | None = None, **overrides: Any):
    """The `GRPOConfig` of one stage (every value from params; `overrides` for tests / GPU profiles)."""
    from trl import GRPOConfig

    batch = rl.prompts_per_step * rl.num_generations
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=int(steps),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        beta=rl.beta,
        learning_rate=rl.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        seed=int(seed),
        data_seed=int(seed),
        bf16=rl.bf16,
        fp16=False,
        gradient_checkpointing=rl.gradient_checkpointing,
        use_cpu=llm.device == "cpu",
        reward_weights=list(reward_weights) if reward_weights is not None else None,
        report_to="none",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        log_completions=False,
        disable_tqdm=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # reward functions read the extra columns
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall seconds of each optimizer step (generation + rewards + update), and a few samples per step."""

        def __init__(self):
            self.seconds: dict[int, float] = {}
            self.samples: dict[int, list[dict[str, Any]]] = {}
            self.trainer = None
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds[state.global_step] = time.perf_counter() - self._t0
            self.samples[state.global_step] = _last_samples(self.trainer, args.per_device_train_batch_size)

    return StepTimer()


def _last_samples(trainer, n: int) -> list[dict[str, Any]]:
    """The step's completions with their rewards and advantages (TRL keeps them in `trainer._logs`)."""
    logs = getattr(trainer, "_logs", None)
    if not logs:
        return []
    completions = list(logs["completion"])[-n:]
    advantages = list(logs["advantages"])[-n:]
    rewards = {k: list(v)[-n:] for k, v in logs["rewards"].items()}
    out = []
    for i, c in enumerate(completions):
        row = {"completion": completion_text(c),
               "advantage": _num(advantages[i]) if i < len(advantages) else None}
        row.update({f"reward/{k}": _num(v[i]) for k, v in rewards.items() if i < len(v)})
        out.append(row)
    return out


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library chatter that is noise here (keeps errors and the tqdm step bar).

    Known noise: transformers' "Trainer.tokenizer is deprecated"-style notices, accelerate's CPU notes, TRL's
    generation-config notices and peft's "Already found a peft_config" style warnings.
    """
    import transformers

    names = ("transformers", "trl", "peft", "accelerate")
    loggers = [logging.getLogger(n) for n in names]
    old_levels = [lg.level for lg in loggers]
    old_tf = transformers.logging.get_verbosity()
    try:
        transformers.logging.set_verbosity_error()
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for mod in ("trl", "transformers", "peft", "accelerate", "torch"):
                warnings.filterwarnings("ignore", category=UserWarning, module=mod)
                warnings.filterwarnings("ignore", category=FutureWarning, module=mod)
            yield
    finally:
        transformers.logging.set_verbosity(old_tf)
        for lg, lvl in zip(loggers, old_levels):
            lg.setLevel(lvl)


def _step_logs(log_history: list[dict[str, Any]], timer) -> list[dict[str, Any]]:
    steps = []
    for entry in log_history:
        if "step" not in entry or "train_runtime" in entry:
            continue  # the closing summary entry
        row = {k: (_num(v) if not isinstance(v, str) else v) for k, v in entry.items()}
        row["step"] = int(entry["step"])
        row["seconds"] = round(timer.seconds.get(row["step"], float("nan")), 3) \
            if row["step"] in timer.seconds else None
        row["samples"] = timer.samples.get(row["step"], [])
        steps.append(row)
    return steps


def train_policy(model, tokenizer, dataset, reward_funcs: Sequence[RewardFunc],
                 reward_weights: Sequence[float] | None, rl: RLParams, llm: LLMParams, steps: int, seed: int,
                 init_adapter_dir: str | Path | None = None, **config_overrides: Any):
    """Run GRPO on `model` (a plain causal LM: a fresh LoRA adapter is added, or `init_adapter_dir` is loaded
    trainable). Returns (trained PeftModel, per-step logs, summary). Writes nothing to disk but a temporary
    output dir that is removed. Callers that own the model (tests) can compare base weights afterwards."""
    from trl import GRPOTrainer

    if steps < 1:
        raise ExpCTRError(f"RL steps must be >= 1, got {steps}")
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise ExpCTRError("at least one reward function is needed")
    if reward_weights is not None and len(reward_weights) != len(reward_funcs):
        raise ExpCTRError(f"{len(reward_weights)} reward weights for {len(reward_funcs)} reward functions")
    if len(dataset) < rl.prompts_per_step:
        raise ExpCTRError(f"{len(dataset)} prompts < prompts_per_step={rl.prompts_per_step}")
    set_threads(llm.threads)

    peft_config = None
    if init_adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(check_adapter_dir(init_adapter_dir)),
                                          adapter_name=ADAPTER_NAME, is_trainable=True)
    else:
        peft_config = lora_config(rl)

    timer = _step_timer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="expctr-grpo-") as tmp, _quiet():
        args = grpo_config(rl, llm, steps, seed, tmp, reward_weights, **config_overrides)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
        timer.trainer = trainer
        policy = trainer.accelerator.unwrap_model(trainer.model)
        n_trainable = _check_only_lora_trainable(policy)
        trainer.train()
    logs = _step_logs(trainer.state.log_history, timer)
    policy.eval()
    secs = [s["seconds"] for s in logs if s.get("seconds") is not None]
    summary = {
        "steps": int(trainer.state.global_step),
        "seconds": round(time.perf_counter() - started, 3),
        "mean_seconds_per_step": round(sum(secs) / len(secs), 3) if secs else None,
        "reward_names": list(trainer.reward_func_names),
        "reward_weights": [float(w) for w in trainer.reward_weights.tolist()],
        "n_trainable_params": n_trainable,
        "batch": {"prompts_per_step": rl.prompts_per_step, "num_generations": rl.num_generations,
                  "completions_per_step": rl.prompts_per_step * rl.num_generations},
        "mean_frac_reward_zero_std": _mean([s.get("frac_reward_zero_std") for s in logs]),
        "init_adapter_dir": None if init_adapter_dir is None else str(init_adapter_dir),
        "seed": int(seed),
    }
    del trainer
    return policy, logs, summary


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def run_rl_stage(
    base_model_dir: str | Path,
    out_adapter_dir: str | Path,
    dataset,
    reward_funcs: Sequence[RewardFunc],
    reward_weights: Sequence[float] | None,
    rl: RLParams,
    llm: LLMParams,
    steps: int,
    seed: int,
    init_adapter_dir: str | Path | None = None,
    log_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train the explainer adapter for `steps` GRPO steps and save it to `out_adapter_dir`.

    `dataset` from `build_prompt_dataset`; `reward_funcs` plain callables (TRL logs them under their
    `__name__`); `reward_weights` one per function (None = all 1). `init_adapter_dir`: continue that adapter
    (a later stage / round); otherwise a fresh LoRA adapter from `rl`. Returns `{"summary": ..., "steps": [...]}`
    where each step row holds TRL's metrics as logged (`loss`, `reward`, `reward_std`,
    `rewards/<name>/mean|std`, `frac_reward_zero_std`, `kl` when beta > 0, `entropy`,
    `completions/mean_length` ...), `seconds` (wall time of the step) and `samples` (the step's completions
    with rewards and advantages). With `log_path`, the step rows are also written there as JSON lines.
    """
    set_threads(llm.threads)
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype=llm.dtype, device=llm.device)
    policy, logs, summary = train_policy(model, tokenizer, dataset, reward_funcs, reward_weights, rl, llm,
                                         steps, seed, init_adapter_dir=init_adapter_dir)
    save_adapter(policy, out_adapter_dir)
    summary["adapter_dir"] = str(out_adapter_dir)
    summary["base_model_dir"] = str(base_model_dir)
    if log_path is not None:
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in logs))
    return {"summary": summary, "steps": logs}


__all__ = [
    "ADAPTER_FILES",
    "ID_COLUMNS",
    "adapter_weights",
    "base_weights",
    "build_prompt_dataset",
    "check_adapter_dir",
    "completion_text",
    "grpo_config",
    "load_explainer",
    "lora_config",
    "run_rl_stage",
    "save_adapter",
    "train_policy",
]
