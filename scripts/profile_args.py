"""Turn a params profile (a YAML of overrides, e.g. profiles/gpu.yaml) into `dvc exp run -S` arguments,
or write it into params.yaml (--write). Keys are validated against the params schema first.

    dvc exp run $(.venv/bin/python scripts/profile_args.py profiles/gpu.yaml)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--write", action="store_true", help="write the merged parameters into --params")
    args = ap.parse_args()
    from expctr.config import Params  # validates every key and type of the merged result

    params = yaml.safe_load(args.params.read_text())
    overrides = yaml.safe_load(args.profile.read_text()) or {}
    result = merged(params, overrides)
    Params.model_validate(result)
    if args.write:
        args.params.write_text(yaml.safe_dump(result, sort_keys=False))
        return
    print(" ".join(f"-S {shlex.quote(f'{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}')}"
                   for k, v in flatten(overrides).items()))


if __name__ == "__main__":
    main()
