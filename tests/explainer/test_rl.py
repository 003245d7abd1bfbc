"""The RL stage runner on the real SmolLM2 base model and real ML-1M pairs, at tiny settings.

One GRPO step (2 prompts x 2 completions of <= 12 tokens) with a plain deterministic reward must move the
LoRA weights and leave every base weight bit-identical (like TRL's own PEFT test); the saved adapter
directory holds only the adapter files, reloads to the same tensors, and a continued stage (a GRPO step under
the policy's own graded verdicts) starts from them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from support import TEST_THREADS as THREADS

from expctr.config import LLMParams, RLParams
from expctr.data.pairs import attach_items, sample_pairs
from expctr.errors import ExpCTRError
from expctr.explainer.dataset import ID_COLUMNS, build_prompt_dataset
from expctr.explainer.grpo import (
    grpo_bf16,
    grpo_config,
    micro_batch_size,
    refresh_rollout_copy,
    rollout_copy,
    train_policy,
)
from expctr.explainer.lora import adapter_weights
from expctr.explainer.rl import run_rl_stage
from expctr.llm.adapters import ADAPTER_FILES, load_explainer, save_adapter
from expctr.llm.base_model import load_model, load_tokenizer
from expctr.llm.explanations import completion_text
from expctr.llm.prompts import shared_part_tokens
from expctr.llm.verdicts import EXPLANATION_PREFIX, VERDICT_GRADES

MAX_PROMPT_TOKENS = 100  # below the full 10-item history's shared part: fitting must drop items
RL = RLParams(prompts_per_step=2, num_generations=2, max_completion_length=12)
LLM = LLMParams(threads=THREADS, max_prompt_tokens=MAX_PROMPT_TOKENS)


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    return load_tokenizer(base_model_dir)


@pytest.fixture(scope="module")
def pairs(tiny_real_project: Path) -> pl.DataFrame:
    feats = tiny_real_project / "data" / "features"
    train = pl.read_parquet(feats / "train.parquet").filter(pl.col("hist_len") >= 8)
    return attach_items(sample_pairs(train, 2, seed=3, balance=True), pl.read_parquet(feats / "items.parquet"))


@pytest.fixture(scope="module")
def dataset(pairs, tokenizer):
    return build_prompt_dataset(pairs, tokenizer, MAX_PROMPT_TOKENS)


class LengthReward:
    """Prefers shorter completions (plain, deterministic); records the kwargs TRL passes."""

    __name__ = "short"

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, **kwargs})
        return [-len(completion_text(c)) / 40.0 for c in completions]


class ConstantReward:
    """Zero advantages everywhere (so no update); records what it was given."""

    __name__ = "constant"

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, **kwargs})
        return [1.0] * len(completions)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ dataset


def test_prompt_dataset_fits_the_budget_and_carries_reward_columns(dataset, pairs, tokenizer):
    assert len(dataset) == 2
    for row, full_history in zip(dataset, pairs["history"].to_list()):
        # the shared part (system, task, history) fits the budget; one more history item would not
        assert shared_part_tokens(tokenizer, row["history"]) <= MAX_PROMPT_TOKENS
        one_more = full_history[row["n_history_dropped"] - 1:]
        assert shared_part_tokens(tokenizer, one_more) > MAX_PROMPT_TOKENS
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["prompt"][1]["content"].index("Liked:") < row["prompt"][1]["content"].index("Target:")
        # the oldest items were dropped, the most recent kept, and `history` is what the explainer saw
        assert row["n_history_dropped"] > 0
        assert len(row["history"]) + row["n_history_dropped"] == len(full_history)
        assert [h["title"] for h in row["history"]] == [h["title"] for h in full_history[row["n_history_dropped"]:]]
        assert all(f'"{h["title"]}"' in row["prompt"][1]["content"] for h in row["history"])
        assert row["label"] in (0, 1) and isinstance(row["label"], int)
        for c in ID_COLUMNS:
            assert isinstance(row[c], (int, list)), c
    assert sorted(dataset["label"]) == [0, 1]  # balanced sample
    assert "p_id" not in dataset.column_names  # optional columns only when the pairs have them
    assert all(isinstance(v, int) for v in dataset[0]["hist_item_idx"])


def test_prompt_dataset_with_an_assistant_prefix(pairs, tokenizer):
    prefix = EXPLANATION_PREFIX
    ds = build_prompt_dataset(pairs, tokenizer, MAX_PROMPT_TOKENS, assistant_prefix=prefix)
    for row in ds:
        assert isinstance(row["prompt"], str) and row["prompt"].endswith(prefix)
        assert row["explanation_prefix"] == prefix
        assert set(row["facts"]) >= {"liked_share", "n_liked", "liked_sharing"}
    assert completion_text(" not enjoy it.", prefix) == "The user will not enjoy it."
    assert completion_text([{"role": "assistant", "content": "Fine."}]) == "Fine."


def test_prompt_dataset_per_row_prefixes_and_no_label(pairs, tokenizer):
    """Verdict-opened prompts (one prefix per row) share the history fitted for the plain prefix, and a frame
    without labels (the IC stage's) still builds."""
    from expctr.llm.verdicts import verdict_prefix

    plain = build_prompt_dataset(pairs, tokenizer, MAX_PROMPT_TOKENS, EXPLANATION_PREFIX)
    opened = build_prompt_dataset(pairs.drop("label"), tokenizer, MAX_PROMPT_TOKENS,
                                  [verdict_prefix(True), verdict_prefix(False)])
    assert "label" not in opened.column_names
    assert [r["explanation_prefix"] for r in opened] == [verdict_prefix(True), verdict_prefix(False)]
    assert opened["history"] == plain["history"]
    assert opened[1]["prompt"].endswith("The user will likely not enjoy")


def test_prompt_dataset_errors(pairs, tokenizer):
    with pytest.raises(ExpCTRError, match="hist_click"):
        build_prompt_dataset(pairs.drop("hist_click"), tokenizer, MAX_PROMPT_TOKENS)
    with pytest.raises(ExpCTRError, match="3 assistant prefixes for 2 pairs"):
        build_prompt_dataset(pairs, tokenizer, MAX_PROMPT_TOKENS, ["a", "b", "c"])
    with pytest.raises(ValueError, match="does not fit"):
        build_prompt_dataset(pairs, tokenizer, 48)


def test_grpo_config_is_the_cpu_profile():
    from expctr.llm.base_model import cpu_has_native_bf16

    cfg = grpo_config(RLParams(), LLMParams(), steps=3, seed=1, output_dir="unused")
    # bf16 autocast where the CPU computes bfloat16 natively, never where it would emulate it
    assert cfg.bf16 is cpu_has_native_bf16() and cfg.gradient_checkpointing is False and cfg.use_cpu is True
    assert grpo_config(RLParams(bf16=False), LLMParams(), steps=1, seed=1, output_dir="unused").bf16 is False
    # one optimizer step = one generation batch of 2 prompts x 4 completions, back-propagated 2 at a time
    assert cfg.generation_batch_size == 2 * 4 and cfg.num_generations == 4
    assert cfg.per_device_train_batch_size == 2 and cfg.gradient_accumulation_steps == 4
    assert cfg.steps_per_generation == cfg.gradient_accumulation_steps
    gpu = grpo_config(RLParams(), LLMParams(device="cuda"), steps=1, seed=1, output_dir="unused", use_cpu=True)
    assert gpu.per_device_train_batch_size == 8 and gpu.gradient_accumulation_steps == 1
    assert micro_batch_size(RLParams(prompts_per_step=3, num_generations=2), LLMParams(), 4) == 3
    assert cfg.max_steps == 3 and cfg.save_strategy == "no" and cfg.logging_steps == 1
    assert cfg.remove_unused_columns is False and cfg.report_to == []
    assert cfg.scale_rewards == "batch"


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(base_model_dir, tokenizer, dataset):
    """One GRPO step on a model we own, with the base state snapshotted before the adapter is added."""
    torch.set_num_threads(THREADS)
    model = load_model(base_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reward = LengthReward()
    policy, logs, summary = train_policy(model, tokenizer, dataset, [reward], None, RL, LLM, steps=1, seed=0)
    return {"policy": policy, "logs": logs, "summary": summary, "before": before, "reward": reward}


def test_one_step_moves_lora_and_keeps_every_base_weight(trained):
    policy, before = trained["policy"], trained["before"]
    lora = adapter_weights(policy)
    assert lora and all("lora_" in k for k in lora)
    # peft initialises lora_B to exactly zero; one update with a non-zero advantage moves it
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    after = {k.replace(".base_layer", ""): v for k, v in policy.get_base_model().state_dict().items()
             if "lora_" not in k}
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


def test_rollouts_come_from_a_merged_copy_that_follows_the_policy(trained, tokenizer):
    """With bf16 autocast the completions are sampled from a merged copy: it reads what the policy reads, and
    after the adapter moves, a refresh makes it read the moved policy again."""
    policy = trained["policy"]
    assert trained["summary"]["rollouts"] == ("merged_bfloat16_copy" if grpo_bf16(RL, LLM) else "policy")
    ids = tokenizer(["The user will enjoy \"Heat\" because"], return_tensors="pt")["input_ids"]
    plain = rollout_copy(policy, torch.float32)  # float32 here: equal to the policy's reading, not only close

    def agree():
        with torch.inference_mode():
            # the LoRA-injected model itself: accelerate left the PeftModel's forward in bf16 autocast
            ref = policy.get_base_model()(input_ids=ids).logits
            return torch.allclose(plain(input_ids=ids).logits, ref, atol=1e-3)

    def shift(by: float):
        with torch.no_grad():
            for n, w in policy.named_parameters():
                if "lora_B" in n:
                    w.add_(by)

    policy.eval()
    assert agree() and not any("lora_" in n for n, _ in plain.named_parameters())
    shift(0.05)
    try:
        assert not agree()
        assert refresh_rollout_copy(plain, policy) == 2 * policy.config.num_hidden_layers  # q_proj, v_proj
        assert agree()
    finally:
        shift(-0.05)  # the fixture's policy, as the other tests expect it


def test_step_logs_and_reward_kwargs(trained, dataset):
    logs, summary, calls = trained["logs"], trained["summary"], trained["reward"].calls
    assert summary["steps"] == 1 and summary["reward_names"] == ["short"]
    assert summary["batch"]["completions_per_step"] == 4 and summary["batch"]["micro_batch"] == 2
    (row,) = logs
    for key in ("loss", "reward", "reward_std", "rewards/short/mean", "rewards/short/std",
                "completions/mean_length", "frac_reward_zero_std", "seconds"):
        assert row[key] is not None, key
    assert row["completions/max_length"] <= RL.max_completion_length
    assert len(row["samples"]) == 4 and all("reward/short" in s for s in row["samples"])
    # every dataset column but `prompt` arrives as a kwarg list aligned with the completions
    (call,) = calls
    assert len(call["completions"]) == 4
    for col in set(dataset.column_names) - {"prompt"}:
        assert len(call[col]) == 4, col
    rows = {(r["user_idx"], r["item_idx"]): r for r in dataset}
    for i in range(4):  # TRL repeats each prompt num_generations times
        src = rows[(call["user_idx"][i], call["item_idx"][i])]
        assert call["label"][i] == src["label"]
        assert call["history"][i] == src["history"] and call["target"][i] == src["target"]
        assert call["hist_item_idx"][i] == src["hist_item_idx"] and call["genre_idx"][i] == src["genre_idx"]
        assert call["prompts"][i] == src["prompt"]
    assert "trainer_state" in call and callable(call["log_metric"])


def test_saved_adapter_reloads_and_a_continued_stage_starts_from_it(trained, base_model_dir, pairs, tokenizer,
                                                                     tmp_path):
    adapter_dir = save_adapter(trained["policy"], tmp_path / "adapter")
    assert sorted(p.name for p in adapter_dir.iterdir()) == sorted(ADAPTER_FILES)
    want = adapter_weights(trained["policy"])

    loaded, _ = load_explainer(base_model_dir, adapter_dir, LLM, merge=False)
    got = adapter_weights(loaded)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    del loaded

    # A GRPO step with a constant reward has zero advantages and leaves the weights exactly where they started
    # (the verdict step is skipped: no verdict data), so the continued adapter equals the saved one only if
    # training really began from it (a fresh adapter would still have lora_B == 0).

    base_file = Path(base_model_dir) / "model.safetensors"
    base_sha = _sha256(base_file)
    log_path = tmp_path / "logs" / "rl.jsonl"
    reward = ConstantReward()
    result = run_rl_stage(base_model_dir, tmp_path / "continued", reward, RL, LLM, seed=1, reason_pairs=pairs,
                          reason_steps=1, init_adapter_dir=adapter_dir, log_path=log_path)
    (call,) = reward.calls
    # the GRPO prompts open the assistant turn with the policy's verdict, graded by its confidence and naming
    # the target (TRL's plain-text path)
    assert all(isinstance(c, str) for c in call["completions"])
    for pre, target in zip(call["explanation_prefix"], call["target"]):
        assert any(pre.startswith(f"{EXPLANATION_PREFIX} {g.words} ") for g in VERDICT_GRADES), pre
        assert f'"{target["title"]}"' in pre
    assert all(p.endswith(pre) for p, pre in zip(call["prompts"], call["explanation_prefix"]))
    assert "verdict" not in result["summary"] and result["summary"]["reason"]["steps"] == 1
    assert sorted(p.name for p in (tmp_path / "continued").iterdir()) == sorted(ADAPTER_FILES)
    cont, _ = load_explainer(base_model_dir, tmp_path / "continued", LLM, merge=False)
    got = adapter_weights(cont)
    assert all(torch.equal(got[k], want[k]) for k in want)
    del cont
    assert _sha256(base_file) == base_sha  # the base model on disk is never written

    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [(x["phase"], x["step"]) for x in lines] == [("reason", 1)] and lines[0]["frac_reward_zero_std"] == 1.0
    with pytest.raises(ExpCTRError, match="verdict prompts or at least one GRPO"):
        run_rl_stage(base_model_dir, tmp_path / "nothing", reward, RL, LLM, seed=1)

    # merged explainer = base + LoRA delta, a plain causal LM
    merged, tok = load_explainer(base_model_dir, adapter_dir, LLM)
    assert not hasattr(merged, "peft_config")
    ids = tok("Hello", return_tensors="pt")
    with torch.inference_mode():
        assert torch.isfinite(merged(**ids).logits).all()


def test_missing_adapter_is_a_clear_error(base_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExpCTRError, match="adapter_model.safetensors"):
        load_explainer(base_model_dir, tmp_path / "empty", LLM)
