"""The GRPO reason step of an RL stage (TRL's `GRPOTrainer` on the LoRA adapter), with per-step logs.

Why GRPO (TRL) although the paper used PPO: no value model (PPO trains a critic next to the policy); our
rewards are one scalar per finished explanation, what group-relative advantages are built for; and it is TRL's
maintained path (`PPOTrainer` lives under `trl.experimental`). Name clash: TRL's `num_iterations` (policy updates
per generation batch) is not our outer `round`.

One step = `prompts_per_step` prompts x `num_generations` sampled completions (generated together), scored by
the reward callable, one optimizer update, back-propagated in micro batches on CPU (gradient accumulation:
measured on SmolLM2-135M, 8 x 420 tokens: one fwd+bwd pass 15.8 s and 6 GB of activations, four passes of 2
10.8 s and 2.2 GB). Advantages are scaled by the reward std of the whole batch (`scale_rewards="batch"`):
completions that share a stance differ by wording-driven judge noise, and per-group scaling would blow that
noise up to unit-size advantages. CPU profile: `GRPOConfig` defaults to bf16 and gradient checkpointing; both
come from `RLParams` instead. The learning rate is constant: a stage is a handful of steps.

Rollouts in bfloat16 (`rl.merged_rollouts`, when the step runs in bf16 autocast): TRL samples from the policy itself, whose frozen
float32 weights autocast casts again at every one of a completion's ~30 forward passes, through the unmerged
LoRA layers. Here they are sampled from a plain copy of the policy with its adapter merged, in bfloat16
(`rollout_copy`, made once per stage; `refresh_rollout_copy` re-merges the 60 adapted matrices before each
generation, ~0.03 s): the same policy, read in eval mode (no LoRA dropout while sampling), by TRL's own
`generate` with its sampling settings. The loss is computed on the policy as before.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from expctr.config import LLMParams, RLParams
from expctr.errors import ExpCTRError
from expctr.explainer.lora import attach_adapter, check_only_lora_trainable
from expctr.llm.adapters import quiet_peft
from expctr.llm.base_model import set_threads
from expctr.llm.explanations import completion_text

RewardFunc = Callable[..., list]


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
        "bf16": grpo_bf16(rl, llm),
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


def grpo_bf16(rl: RLParams, llm: LLMParams) -> bool:
    """Whether the GRPO step runs in bfloat16 autocast: `rl.bf16`, where `auto` means on a CPU with native
    BF16 (`expctr.llm.base_model.inference_dtype`)."""
    if rl.bf16 != "auto":
        return bool(rl.bf16)
    from expctr.llm.base_model import inference_dtype

    return inference_dtype("auto", llm.device) == "bfloat16"  # off the CPU: the fallback, float32


def rollout_copy(policy, dtype):
    """A plain causal LM equal to `policy` (a PeftModel) with its adapter merged, in `dtype`, in eval mode."""
    import copy

    with quiet_peft():
        plain = copy.deepcopy(policy).merge_and_unload()
    for module in plain.modules():  # TRL patches `forward` on the instance with a closure over the original
        module.__dict__.pop("forward", None)  # model (deepcopy keeps the closure): back to the class's forward
    return plain.to(dtype).eval()


def refresh_rollout_copy(plain, policy) -> int:
    """Write the policy's current merged weights (base + LoRA delta) into `rollout_copy`'s adapted layers;
    returns how many."""
    import torch

    layers = dict(plain.named_modules())
    adapter = policy.active_adapter
    n = 0
    with torch.no_grad():
        for name, module in policy.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                target = layers[name.removeprefix("base_model.model.")]
                target.weight.copy_(module.base_layer.weight + module.get_delta_weight(adapter))
                n += 1
    return n


def _trainer_class(rollout_dtype):
    """TRL's GRPOTrainer, sampling its rollouts from a merged copy in `rollout_dtype` (None: from the policy)."""
    from trl import GRPOTrainer

    if rollout_dtype is None:
        return GRPOTrainer

    class MergedRolloutTrainer(GRPOTrainer):
        """GRPO whose completions are generated by `rollout_copy` (module docstring), refreshed each time."""

        _rollout = None

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            policy = self.accelerator.unwrap_model(self.model_wrapped)
            if self._rollout is None:
                self._rollout = rollout_copy(policy, rollout_dtype)
            else:
                refresh_rollout_copy(self._rollout, policy)
            wrapped, self.model_wrapped = self.model_wrapped, self._rollout
            try:
                return super()._generate_single_turn(prompt_ids, *args, **kwargs)
            finally:
                self.model_wrapped = wrapped

    return MergedRolloutTrainer


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
    import torch

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
    with tempfile.TemporaryDirectory(prefix="expctr-grpo-") as tmp, quiet_peft():
        args = grpo_config(rl, llm, steps, seed, tmp, reward_weights, micro_batch, **config_overrides)
        merged = args.bf16 and rl.merged_rollouts
        trainer_class = _trainer_class(torch.bfloat16 if merged else None)
        trainer = trainer_class(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                                processing_class=tokenizer, callbacks=[timer])
        timer.trainer = trainer
        policy = trainer.accelerator.unwrap_model(trainer.model)
        n_trainable = check_only_lora_trainable(policy)
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
        "rollouts": "merged_bfloat16_copy" if merged else "policy",
        "seed": int(seed),
    }
    del trainer
    return policy, logs, summary


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
