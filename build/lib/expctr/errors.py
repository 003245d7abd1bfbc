"""Errors a person can act on: each names the file or table, the row and what was expected."""

from __future__ import annotations


class ExpCTRError(Exception):
    """Base class; the CLI prints these without a traceback and exits with status 2."""


class DataFormatError(ExpCTRError):
    """A source file is missing, truncated or malformed."""

    def __init__(self, path: object, message: str, row: int | None = None, line: str | None = None):
        self.path, self.row, self.line = str(path), row, line
        where = f"{self.path}" + (f", row {row}" if row is not None else "")
        text = f"{where}: {message}"
        if line is not None:
            text += f"\n  offending line: {line[:200]!r}"
        super().__init__(text)


class ChecksumError(ExpCTRError):
    """A fetched artifact does not have the sha256 recorded in params.yaml."""


class ValidationFailed(ExpCTRError):
    """A Great Expectations suite failed; the message lists table, expectation and example rows."""
