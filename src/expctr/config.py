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
    device: str = "cpu"

    @model_validator(mode="after")
    def _model_is_compared(self) -> CTRParams:
        if self.model not in self.compare:
            self.compare.append(self.model)
        return self


class Params(BaseModel):
    """The whole params.yaml; a typo in any key is an error rather than a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    data: DataParams = Field(default_factory=DataParams)
    features: FeatureParams = Field(default_factory=FeatureParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
    ctr: CTRParams = Field(default_factory=CTRParams)


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
