"""Turn a params profile (a YAML of overrides, e.g. profiles/gpu.yaml) into `dvc exp run -S` arguments,
or write it into params.yaml (--write). The merged result is validated against the params schema first.

A profile may start from others: `extends: gpu.yaml` (or a list), resolved next to the profile and applied
first, so profiles/multi-gpu.yaml is the GPU profile plus its own keys.

    dvc exp run $(.venv/bin/python scripts/profile_args.py profiles/multi-gpu.yaml)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def merged(params: dict, overrides: dict) -> dict:
    out = dict(params)
    for k, v in overrides.items():
        out[k] = merged(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_profile(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The profile's overrides with every `extends` base applied first (bases resolved next to the profile)."""
    path = path.resolve()
    if path in _seen:
        raise SystemExit(f"{path}: `extends` loops back to itself ({' -> '.join(p.name for p in _seen)})")
    if not path.exists():
        raise SystemExit(f"{path}: profile not found" + (f" (extended by {_seen[-1]})" if _seen else ""))
    own = yaml.safe_load(path.read_text()) or {}
    if not isinstance(own, dict):
        raise SystemExit(f"{path}: a profile is a mapping of params sections, found {type(own).__name__}")
    bases = own.pop("extends", [])
    result: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        result = merged(result, load_profile(path.parent / base, (*_seen, path)))
    return merged(result, own)


def set_argument(key: str, value: object) -> str:
    """One `-S key=value` pair; non-strings in YAML/JSON form so DVC reads back the same type (null, lists)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"-S {shlex.quote(f'{key}={text}')}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--write", action="store_true", help="write the merged parameters into --params")
    args = ap.parse_args()
    from expctr.config import Params  # validates every key and type of the merged result

    params = yaml.safe_load(args.params.read_text())
    overrides = load_profile(args.profile)
    result = merged(params, overrides)
    Params.model_validate(result)
    if args.write:
        args.params.write_text(yaml.safe_dump(result, sort_keys=False))
        return
    print(" ".join(set_argument(k, v) for k, v in flatten(overrides).items()))


if __name__ == "__main__":
    main()
