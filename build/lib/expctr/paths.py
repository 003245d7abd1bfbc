"""Where each stage reads and writes, relative to the project root (the same paths dvc.yaml declares)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def ctr_models(self) -> Path:
        return self.root / "models" / "ctr"

    @property
    def base_llm(self) -> Path:
        return self.root / "models" / "base_llm"

    @property
    def llm_pairs(self) -> Path:
        return self.root / "data" / "llm_pairs"

    def round_dir(self, k: int) -> Path:
        return self.root / "models" / "rounds" / f"round_{k}"

    def explanations(self, k: int) -> Path:
        return self.root / "data" / "explanations" / f"round_{k}"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def metric(self, name: str) -> Path:
        return self.metrics / name

    def resolve(self, path: str) -> Path:
        """A params.yaml path: absolute as given, relative to the project root otherwise."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p
