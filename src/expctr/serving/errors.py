"""Typed errors: every error response of the service is `{"error": {"code", "message", "field"}}`.

`code` is a stable machine-readable name, `message` says what is wrong, `field` names the part of the request
it is about as the client sent it (`candidates.1`, `history.0.rating`, `item_id`; null when it is about the
request as a whole), and `details` lists every schema violation when there are several. The framework's own
answers (no such route, wrong method, not ready, an unexpected failure) get the same body through
`error_for_status` (see `expctr.serving.guard`), so a client reads one shape whatever went wrong.
"""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the service refuses (or could not serve): `status` is its HTTP status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message, self.field, self.details = message, field, details

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
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
    """An id the model pair does not know (a route that does not exist is RouteNotFound)."""

    status, code = 404, "unknown_id"


class RouteNotFound(RequestError):
    status, code = 404, "not_found"


class MethodNotAllowed(RequestError):
    status, code = 405, "method_not_allowed"


class TooManyRequests(RequestError):
    status, code = 429, "too_many_requests"


class InternalError(RequestError):
    status, code = 500, "internal_error"


class Unavailable(RequestError):
    status, code = 503, "unavailable"


class Timeout(RequestError):
    status, code = 504, "timeout"


BY_STATUS: dict[int, type[RequestError]] = {cls.status: cls for cls in (
    RequestError, PayloadTooLarge, UnsupportedMediaType, InvalidRequest, RouteNotFound, MethodNotAllowed,
    TooManyRequests, InternalError, Unavailable, Timeout)}


def error_for_status(status: int, message: str, field: str | None = None) -> RequestError:
    """The typed error for a status the framework answered with; an unlisted status keeps its number
    (`code` "http_<status>")."""
    cls = BY_STATUS.get(status)
    if cls is not None:
        return cls(message, field=field)
    err = RequestError(message, field=field)
    err.status, err.code = status, f"http_{status}"
    return err


__all__ = ["BY_STATUS", "DuplicateIds", "InternalError", "InvalidEncoding", "InvalidJSON", "InvalidRequest",
           "LimitExceeded", "MethodNotAllowed", "PayloadTooLarge", "RequestError", "RouteNotFound", "Timeout",
           "TooManyRequests", "Unavailable", "UnknownId", "UnsupportedMediaType", "error_for_status"]
