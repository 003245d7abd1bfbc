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

One step = `prompts_per_step` prompts x `num_generations` sampled completions (TRL's generation batch,
generated together; "divisible by num_generations" holds by construction), scored by the reward functions,
one optimizer update. The backward pass runs in micro batches of 2 completions on CPU (gradient
accumulation; TRL then generates once per optimizer step and its "dapo" loss normalises over the whole
accumulated batch, so the update equals the one-batch update - same logged losses, measured). Measured on
SmolLM2-135M, 8 x 420 tokens: one fwd+bwd pass 15.8 s and 6 GB of activations, four passes of 2 10.8 s and
2.2 GB; a default GRPO step peaked at 10.1 GB RSS in one batch, 3.5 GB in micro batches.

Advantages are scaled by the reward std of the whole BATCH (`scale_rewards="batch"`), not of each group
(TRL's default): the judge follows the stated stance, and completions that share a stance differ by
wording-driven judge noise (measured: within-group std of the LC log-prob reward ~0.4 for same-stance base
samples); per-group scaling blows that noise up to unit-size advantages in every group, batch scaling keeps
groups whose completions disagree on the stance dominant.

CPU profile (DESIGN.md "Traps"): `GRPOConfig` defaults to bf16=True (~8x slower on this AVX2-only CPU) and
gradient checkpointing; both come from `RLParams` (default off; with micro batches checkpointing is not needed
for memory). The learning rate is constant: a stage is a handful of steps, a decaying schedule would mostly
train at a fraction of the configured rate.

Reward functions are plain callables `f(prompts, completions, **kwargs) -> list[float | None]`; TRL passes
every dataset column except `prompt` as a kwarg list aligned with `completions` (see
`build_prompt_dataset`), plus `completion_ids`, `trainer_state`, `log_extra` and `log_metric`. Completions of a
conversational dataset arrive as `[{"role": "assistant", "content": text}]` (use `completion_text`).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expctr.config import LLMParams, RLParams
from expctr.errors import ExpCTRError
from expctr.explainer.rewards import completion_text
from expctr.io import atomic_path
from expctr.llm.base_model import load_model, load_tokenizer, set_threads
from expctr.llm.prompts import (
    EXPLANATION_PREFIX,
    as_item,
    explainer_messages,
    fitted_explainer_history,
    rendered_prompt,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_NAME = "default"

# ID feature columns the IC reward (text-augmented CTR model) needs, passed through as plain python values.
ID_COLUMNS = ("user_idx", "item_idx", "gender_idx", "age_idx", "occupation_idx", "decade_idx", "genre_idx",
              "hist_item_idx", "hist_click")
# kept when present: the label (LC needs it, IC does not), precomputed signals, readable ids for logs
OPTIONAL_COLUMNS = ("label", "p_id", "judge_p_yes_pos", "judge_p_yes_neg", "user_id", "item_id")
REQUIRED_COLUMNS = ("history", "target", *ID_COLUMNS)

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


def build_prompt_dataset(pairs, tokenizer, max_prompt_tokens: int,
                         assistant_prefix: str | Sequence[str] | None = None):
    """A `datasets.Dataset` of explainer prompts plus the columns reward functions read.

    `pairs`: a polars frame from `expctr.explainer.pairs` (`history`, `target`, `label`, ID feature columns;
    `label` may be absent: the IC reward needs none). Columns of the result:
    - `prompt`: `explainer_messages(history, target)` with the history cut (oldest items first) by
      `fitted_explainer_history` so the rendered prompt is about `max_prompt_tokens` tokens (TRL 1.16 has no
      prompt truncation of its own, and cutting tokens would cut the chat template);
    - `history`: the items the explainer SAW (list of {title, year, genres, liked}), so a judge scores the
      explanation against the same context; `n_history_dropped` says how many older items the budget cut;
    - `target` ({title, year, genres, liked=None}), `label` (int 0/1, when the pairs have it);
    - the ID feature columns (`ID_COLUMNS`), `p_id` / `judge_p_yes_pos` / `judge_p_yes_neg` and `user_id` /
      `item_id` when present.
    TRL forwards every column except `prompt` to each reward function as a keyword list, one entry per
    completion (tested in tests/explainer/test_rl.py).

    `assistant_prefix` (e.g. "The user will probably", or one per row such as `verdict_prefix(...)`): the
    assistant turn is opened with this text and the policy continues it; the prompt is then the rendered text
    (TRL's conversational path always opens a fresh assistant turn), completions arrive as plain strings, and an
    `explanation_prefix` column carries the prefix so rewards rebuild the full sentence with
    `completion_text(c, prefix)`. Generation at explanation time must use the same prefix. The history is fitted
    with EXPLANATION_PREFIX whatever the row's prefix, so every prompt of a pair shows the same history.
    """
    import datasets

    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.columns]
    if missing:
        raise ExpCTRError(f"pairs frame lacks column(s) {missing} needed by the RL stage (have {pairs.columns})")
    if pairs.height == 0:
        raise ExpCTRError("no pairs to build RL prompts from")
    if assistant_prefix is None or isinstance(assistant_prefix, str):
        row_prefixes = [assistant_prefix] * pairs.height
    else:
        row_prefixes = list(assistant_prefix)
        if len(row_prefixes) != pairs.height:
            raise ExpCTRError(f"{len(row_prefixes)} assistant prefixes for {pairs.height} pairs")
    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in pairs.columns]

    rows = []
    for row, prefix in zip(pairs.select(keep).iter_rows(named=True), row_prefixes):
        history = row["history"] or []
        target = as_item(row["target"])
        fitted = fitted_explainer_history(tokenizer, history, target, max_prompt_tokens)
        messages = explainer_messages(fitted, target)
        if prefix:
            messages = messages + [{"role": "assistant", "content": prefix}]
        out = {
            "prompt": rendered_prompt(tokenizer, messages) if prefix else messages,
            "history": [_item_dict(h) for h in fitted],
            "n_history_dropped": len(history) - len(fitted),
            "target": _item_dict(target),
        }
        for c in (c for c in keep if c not in ("history", "target")):
            out[c] = int(row[c]) if c == "label" else _plain(row[c])
        if prefix:
            out["explanation_prefix"] = prefix
        rows.append(out)
    return datasets.Dataset.from_list(rows)


def prompt_token_ids(dataset, tokenizer) -> list[list[int]]:
    """Token ids of every (rendered text) prompt of a dataset built with an assistant prefix."""
    return [tokenizer(p)["input_ids"] for p in dataset["prompt"]]


# ----------------------------------------------------------------------------------------------- adapters


def lora_config(rl: RLParams, n_layers: int | None = None):
    """peft LoRA config from params. `rl.lora_layers_from` = k puts the adapter on layers k..n_layers-1 only:
    the lower layers stay the base model's, so a backward pass stops at layer k (measured on SmolLM2-135M,
    30 layers: fwd+bwd of a 190-token prompt 0.69 s with LoRA on every layer, 0.40 s on the top 10)."""
    from peft import LoraConfig

    layers = None
    if rl.lora_layers_from is not None:
        if n_layers is None or not 0 <= rl.lora_layers_from < n_layers:
            raise ExpCTRError(f"rl.lora_layers_from={rl.lora_layers_from} is outside the model's {n_layers} layers")
        layers = list(range(rl.lora_layers_from, n_layers))
    return LoraConfig(r=rl.lora_r, lora_alpha=rl.lora_alpha, lora_dropout=rl.lora_dropout,
                      target_modules=list(rl.target_modules), layers_to_transform=layers, bias="none",
                      task_type="CAUSAL_LM")


def attach_adapter(model, rl: RLParams, init_adapter_dir: str | Path | None = None):
    """A trainable PeftModel over `model`: the adapter saved in `init_adapter_dir` (a later stage or round
    continues it), else a fresh LoRA adapter from `rl`. Only LoRA tensors require grad (checked)."""
    from peft import PeftModel, get_peft_model

    with _quiet():
        if init_adapter_dir is not None:
            peft_model = PeftModel.from_pretrained(model, str(check_adapter_dir(init_adapter_dir)),
                                                   adapter_name=ADAPTER_NAME, is_trainable=True)
        else:
            peft_model = get_peft_model(model, lora_config(rl, model.config.num_hidden_layers),
                                        adapter_name=ADAPTER_NAME)
    _check_only_lora_trainable(peft_model)
    return peft_model


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

    with _quiet():
        peft_model = PeftModel.from_pretrained(model, str(check_adapter_dir(adapter_dir)), is_trainable=False)
    model = peft_model.merge_and_unload() if merge else peft_model
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------- training


CPU_MICRO_BATCH = 2  # measured: fwd+bwd of 8 x 420 tokens = 15.8 s / 6.0 GB at once, 10.8 s / 2.2 GB as 4 x 2


def micro_batch_size(rl: RLParams, llm: LLMParams, requested: int | None = None) -> int:
    """Completions per forward/backward pass: `requested`, else 2 on CPU (faster AND ~3x less memory than
    the whole step at once), else the whole step; always a divisor of prompts_per_step * num_generations."""
    batch = rl.prompts_per_step * rl.num_generations
    want = requested or (CPU_MICRO_BATCH if llm.device == "cpu" else batch)
    if want < 1:
        raise ExpCTRError(f"micro batch size must be >= 1, got {want}")
    return max(d for d in range(1, min(want, batch) + 1) if batch % d == 0)


def grpo_config(rl: RLParams, llm: LLMParams, steps: int, seed: int, output_dir: str | Path,
                reward_weights: Sequence[float] | None = None, micro_batch: int | None = None,
                **overrides: Any):
    """The `GRPOConfig` of one stage (every value from params; `overrides` for tests / GPU profiles).

    One optimizer step = one generation batch of prompts_per_step * num_generations completions (generated
    together), back-propagated in micro batches (`micro_batch_size`) through gradient accumulation: TRL's
    `steps_per_generation` = `gradient_accumulation_steps`, so it generates once per optimizer step, and its
    "dapo" loss normalises by the tokens of the whole accumulated batch (same update as one big batch).
    """
    from trl import GRPOConfig

    from expctr.distributed import world_size

    batch = rl.prompts_per_step * rl.num_generations
    micro = micro_batch_size(rl, llm, micro_batch)
    world = world_size()  # under `accelerate launch`: the same global batch, split over the processes
    if batch % (micro * world):
        raise ExpCTRError(f"{batch} completions per step do not split into {world} processes x micro batches "
                          f"of {micro}: choose prompts_per_step * num_generations divisible by {micro * world}")
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": int(steps),
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": batch // (micro * world),
        "generation_batch_size": batch,
        "num_generations": rl.num_generations,
        "max_completion_length": rl.max_completion_length,
        "temperature": rl.temperature,
        "beta": rl.beta,
        "learning_rate": rl.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "seed": int(seed),
        "data_seed": int(seed),
        "bf16": rl.bf16,
        "fp16": False,
        # transformers 5.24 renamed `gradient_checkpointing`; the new name wins and the old mirrors it (TRL
        # reads the old one), so no deprecation warning and TRL's default True is overridden.
        "activation_checkpointing": rl.gradient_checkpointing,
        "use_cpu": llm.device == "cpu",
        "reward_weights": list(reward_weights) if reward_weights is not None else None,
        "scale_rewards": "batch",
        "report_to": "none",
        "save_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "log_completions": False,
        "disable_tqdm": False,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,  # reward functions read the extra columns
    }
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
            self.samples[state.global_step] = _last_samples(self.trainer, args.generation_batch_size)

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
    """Silence the library chatter that is noise here; warnings that could matter stay visible, and so do
    the tqdm step bar and the per-step log line.

    Observed (TRL 1.16 / peft 0.21 / transformers 5.24, one run with `-W default`): only transformers'
    FutureWarnings for its renamed checkpointing aliases (`is_gradient_checkpointing` ->
    `is_activation_checkpointing`), which peft and TRL still read on every model wrap.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated and will be removed",
                                category=FutureWarning)
        yield


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
                 init_adapter_dir: str | Path | None = None, micro_batch: int | None = None,
                 **config_overrides: Any):
    """Run GRPO on `model` (a PeftModel from `attach_adapter`, or a plain causal LM: then a fresh LoRA adapter
    is added, or `init_adapter_dir` is loaded trainable). Returns (trained PeftModel, per-step logs, summary). Writes nothing to disk but a temporary
    output dir that is removed. Callers that own the model (tests) can compare base weights afterwards.
    `micro_batch`: completions per forward/backward pass (see `micro_batch_size`)."""
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

    if hasattr(model, "peft_config"):  # already a PeftModel (the stage runner's, after its verdict step)
        if init_adapter_dir is not None:
            raise ExpCTRError("init_adapter_dir is for a plain model; this one already carries an adapter")
    else:
        model = attach_adapter(model, rl, init_adapter_dir)

    timer = _step_timer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="expctr-grpo-") as tmp, _quiet():
        args = grpo_config(rl, llm, steps, seed, tmp, reward_weights, micro_batch, **config_overrides)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer])
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
                  "completions_per_step": rl.prompts_per_step * rl.num_generations,
                  "micro_batch": int(args.per_device_train_batch_size)},
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
    reward: RewardFunc,
    rl: RLParams,
    llm: LLMParams,
    seed: int,
    *,
    verdict_dataset=None,
    verdict_rewards: tuple[Sequence[float], Sequence[float]] | None = None,
    reason_pairs=None,
    reason_steps: int = 0,
    init_adapter_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    micro_batch: int | None = None,
) -> dict[str, Any]:
    """One RL stage (LC or IC) on the explainer adapter, saved to `out_adapter_dir` (by process 0 only when
    several processes run it: `expctr.explainer.rl_launch`):

    1. verdict step (`expctr.explainer.verdict.train_verdicts`): one pass over `verdict_dataset` (prompts opened
       with EXPLANATION_PREFIX) with the exact rewards `verdict_rewards = (r+, r-)` of its two verdicts;
    2. reason step: `reason_steps` GRPO steps (TRL) on `reason_pairs`, each prompt opened with a verdict drawn
       from the policy after step 1 (`verdict_prefix`), so the group's completions share the verdict and GRPO's
       advantages rank the reasons; `reward` is the stage's reward callable.
    Either step may be skipped (no verdict data / reason_steps=0), not both. `init_adapter_dir`: continue that
    adapter (a later stage / round); otherwise a fresh LoRA adapter from `rl`. Returns `{"summary", "verdict_steps",
    "steps"}`: the verdict step's per-step rows (`reward` = exact expected reward of the batch) and the GRPO rows
    (TRL's metrics, `seconds`, `samples`). With `log_path` both are written there as JSON lines (`phase` column).
    """
    from expctr.explainer.verdict import sample_verdicts, score_verdicts, train_verdicts, verdict_token_ids
    from expctr.llm.prompts import verdict_prefix

    if verdict_dataset is None and reason_steps < 1:
        raise ExpCTRError("an RL stage needs verdict prompts or at least one GRPO reason step")
    set_threads(llm.threads)
    started = time.perf_counter()
    tokenizer = load_tokenizer(base_model_dir)
    model = load_model(base_model_dir, dtype=llm.dtype, device=llm.device)
    import torch

    from expctr.distributed import rank_seed

    torch.manual_seed(int(seed))  # a fresh adapter's LoRA init comes from the seed, the same on every process
    policy = attach_adapter(model, rl, init_adapter_dir)
    torch.manual_seed(rank_seed(int(seed)))  # dropout draws: per process (process 0 keeps the 1-process seed)
    summary: dict[str, Any] = {"n_trainable_params": _check_only_lora_trainable(policy), "seed": int(seed)}
    verdict_logs: list[dict[str, Any]] = []
    if verdict_dataset is not None:
        if verdict_rewards is None:
            raise ExpCTRError("the verdict step needs the rewards of both verdicts per prompt")
        t0 = time.perf_counter()
        verdict_logs = train_verdicts(policy, tokenizer, prompt_token_ids(verdict_dataset, tokenizer),
                                      verdict_rewards[0], verdict_rewards[1], learning_rate=rl.verdict_lr,
                                      batch_size=rl.verdict_batch_size, temperature=rl.verdict_temperature,
                                      seed=seed)
        summary["verdict"] = {"prompts": len(verdict_dataset), "steps": len(verdict_logs),
                              "seconds": round(time.perf_counter() - t0, 3)}
    grpo_logs: list[dict[str, Any]] = []
    if reason_steps > 0:
        opened = build_prompt_dataset(reason_pairs, tokenizer, llm.max_prompt_tokens, EXPLANATION_PREFIX)
        z = score_verdicts(policy, tokenizer, prompt_token_ids(opened, tokenizer), verdict_token_ids(tokenizer),
                           batch_size=llm.gen_batch_size)
        positive = sample_verdicts(z, seed)
        dataset = build_prompt_dataset(reason_pairs, tokenizer, llm.max_prompt_tokens,
                                       [verdict_prefix(bool(v)) for v in positive])
        policy, grpo_logs, grpo_summary = train_policy(policy, tokenizer, dataset, [reward], None, rl, llm,
                                                       reason_steps, seed, micro_batch=micro_batch)
        summary["reason"] = {**grpo_summary, "positive_verdicts": float(np.mean(positive))}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    from expctr.distributed import is_main_process

    if not is_main_process():  # under `accelerate launch`: process 0 writes the adapter and the log
        return {"summary": summary, "verdict_steps": verdict_logs, "steps": grpo_logs}
    save_adapter(policy, out_adapter_dir)
    if log_path is not None:
        rows = [{"phase": "verdict", **r} for r in verdict_logs] + [{"phase": "reason", **r} for r in grpo_logs]
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return {"summary": summary, "verdict_steps": verdict_logs, "steps": grpo_logs}


__all__ = [
    "ADAPTER_FILES",
    "ID_COLUMNS",
    "adapter_weights",
    "attach_adapter",
    "base_weights",
    "build_prompt_dataset",
    "check_adapter_dir",
    "completion_text",
    "grpo_config",
    "load_explainer",
    "lora_config",
    "micro_batch_size",
    "prompt_token_ids",
    "run_rl_stage",
    "save_adapter",
    "train_policy",
]
