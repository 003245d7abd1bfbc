"""Bad data gets a clear error and leaves every existing output untouched (stage CLI, real GX)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from support import run_cli


def snapshot(root: Path) -> dict[str, str]:
    """sha256 + mtime of every file under data/ (the outputs a failed run must not rewrite)."""
    out = {}
    for f in sorted((root / "data").rglob("*")):
        if f.is_file():
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest() + f":{f.stat().st_mtime_ns}"
    return out


def corrupt_truncated(src: Path) -> None:
    text = (src / "ratings.dat").read_text()
    (src / "ratings.dat").write_text(text.rstrip("\n")[:-14])  # the last line cut mid-way


def corrupt_wrong_type(src: Path) -> None:
    lines = (src / "ratings.dat").read_text().splitlines()
    u, i, _, t = lines[4].split("::")
    lines[4] = f"{u}::{i}::four::{t}"
    (src / "ratings.dat").write_text("\n".join(lines) + "\n")


def corrupt_out_of_range(src: Path) -> None:
    lines = (src / "ratings.dat").read_text().splitlines()
    u, i, _, t = lines[7].split("::")
    lines[7] = f"{u}::{i}::7::{t}"
    (src / "ratings.dat").write_text("\n".join(lines) + "\n")


def corrupt_duplicate(src: Path) -> None:
    lines = (src / "ratings.dat").read_text().splitlines()
    lines.insert(10, lines[9])
    (src / "ratings.dat").write_text("\n".join(lines) + "\n")


CASES = {
    "truncated": (corrupt_truncated, ["ratings.dat", "row 600", "expected 4 fields"]),
    "wrong_type": (corrupt_wrong_type, ["ratings.dat", "row 5", "'four'", "expected a number"]),
    "out_of_range": (corrupt_out_of_range, ["table interactions", "expect_column_values_to_be_between", "rating",
                                            "max_value=5.0", "[7.0]", "at table rows (0-based) [7]"]),
    "duplicate": (corrupt_duplicate, ["table interactions", "expect_compound_columns_to_be_unique",
                                      "user_id, item_id, timestamp", "2 of 601 rows"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_source_fails_with_actionable_message_and_keeps_outputs(built_dat_project: Path, tmp_path: Path,
                                                                    case: str):
    dat_project = tmp_path / "project"
    shutil.copytree(built_dat_project, dat_project)  # copy2 keeps mtimes: the snapshot compares them
    before = snapshot(dat_project)
    corrupt, expected = CASES[case]
    corrupt(dat_project / "source")
    proc = run_cli(dat_project, "raw-data", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert snapshot(dat_project) == before
