"""Typed request errors: each maps to one HTTP status and says what is wrong and where."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the service refuses; `status` is a 4xx, `code` a stable machine-readable name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message, self.field, self.details = message, field, details

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.details:
            err["details"] = self.details
        return {"error": err}


class InvalidEncoding(RequestError):
    code = "invalid_encoding"


class InvalidJSON(RequestError):
    code = "invalid_json"


class UnsupportedMediaType(RequestError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(RequestError):
    status, code = 413, "payload_too_large"


class InvalidRequest(RequestError):
    """Schema violations: missing, extra or wrongly typed fields."""

    status, code = 422, "invalid_request"


class LimitExceeded(RequestError):
    status, code = 422, "limit_exceeded"


class DuplicateIds(RequestError):
    status, code = 422, "duplicate_ids"


class UnknownId(RequestError):
    status, code = 404, "unknown_id"


__all__ = ["DuplicateIds", "InvalidEncoding", "InvalidJSON", "InvalidRequest", "LimitExceeded",
           "PayloadTooLarge", "RequestError", "UnknownId", "UnsupportedMediaType"]
