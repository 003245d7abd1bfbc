"""Reward functions for the explainer's RL stages, in TRL's reward signature.

Every reward is a plain callable object `f(prompts, completions, **kwargs) -> list[float]` (one float per
completion) with an instance `__name__` (TRL names its logged columns `rewards/<__name__>/mean` with
`getattr(f, "__name__", ...)`). None of them is an `nn.Module`: TRL would take a Module for a reward MODEL.
They are picklable when what they hold is (models, tokenizers, the JudgeScorer class; no closures).

How TRL 1.16 calls them (GRPOTrainer._calculate_rewards): `prompts` and `completions` are lists of length
B*G; the dataset's other columns arrive as kwargs lists aligned with them (`history`, `target`, `label`,
`user_idx`, ...), plus `completion_ids`, `trainer_state`, `log_extra` and `log_metric`. A completion is a
plain string for text prompts, or `[{"role": "assistant", "content": ...}]` for conversational prompts
(content may also be a list of `{"type": "text", "text": ...}` blocks); `completion_text` accepts all.

Formulas (y = the pair's true label, s = the first sentence of the completion, `generation.first_sentence`,
i.e. exactly what the explainer ships; p_min = 1e-4):

- LC (explanation <-> LLM-CTR):  p = P_judge(Yes | judge_messages(history, target, s)), the frozen base
  model's softmax over its Yes/No logits after "<s> So the answer is";  p_true = p if y = 1 else 1 - p;
  kind="logprob": r = log max(p_true, p_min);  kind="prob": r = p_true.
- IC (explanation <-> ID-CTR):  p_j = the same judge's P(Yes) given the explanation, p_id = the ID model's
  click probability;  kind="logprob": r = p_id log p_j + (1 - p_id) log(1 - p_j) = -BCE(p_id, p_j);
  kind="prob": r = p_id p_j + (1 - p_id)(1 - p_j). No label is needed.
- Format (no model): 0 for a good explanation, else the sum of the penalties that apply
  (FormatReward.DEFAULT_PENALTIES): empty -2.0 (alone: nothing else is checked); more than one sentence
  -0.5; no explicit verdict (`stance(s) == 0`) -1.0; copying the prompt (an 8-word run of the prompt's
  template/instruction text, item titles and their "(year; genres)" excluded) -1.0; longer than 50 words
  -0.5; a reason naming no history item and no shared genre -0.5; a quoted title outside the pair -1.0.

Modules: `common` (the label and soft-target rewards), `lc`, `ic`, `format`, `combine` (the weighted sum and
the stage formulas).

Combining: `combine([(lc, 1.0), (fmt, 1.0)])` returns ONE callable whose value is sum_k w_k * r_k and which
logs every part through TRL's `log_metric` (`<name>/<part>` means) and `log_extra` (per-completion columns).
Why one callable rather than TRL's `reward_weights`: under TRL's default aggregation (sum_then_normalize)
both give the same advantages, but the combined callable skips zero-weight parts (no judge forward pass
when lambda = 0), keeps the stage formula in one tested place (`stage_reward`), and still logs each part.
Passing the parts separately with `reward_weights` remains possible (each part is a valid TRL reward).
"""
