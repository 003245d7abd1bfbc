"""Bytes on the wire -> a validated request, or a typed RequestError that says what is wrong.

Order of checks, cheapest first: size, media type, UTF-8, JSON syntax, a JSON object at the top, schema.
Pydantic's messages are rewritten as `field.path: message` so a client sees which field broke which rule.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from expctr.serving.errors import (
    InvalidEncoding,
    InvalidJSON,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

M = TypeVar("M", bound=BaseModel)


def check_media_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type or 'none'!r}")


def check_size(n_bytes: int, limit: int) -> None:
    if n_bytes > limit:
        raise PayloadTooLarge(f"request body is {n_bytes} bytes; the limit is {limit}")


def decode_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEncoding(f"request body is not valid UTF-8 (byte {exc.start}: {body[exc.start:exc.start + 1]!r})"
                              ) from None
    if not text.strip():
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                          ) from None
    except RecursionError:
        raise InvalidJSON("request body nests too deeply") from None


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(body)"


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the request schema)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        out.append({"field": _loc(err["loc"]), "message": msg})
    return out


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__ if data is not None else 'null'}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = validation_details(exc)
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise InvalidRequest(f"{first['field']}: {first['message']}{more}", field=first["field"],
                             details=details) from None


def parse_request(model: type[M], body: bytes, content_type: str | None, max_body_bytes: int) -> M:
    """Every transport- and schema-level check; the domain checks (ids, limits) live in the predictor."""
    check_size(len(body), max_body_bytes)
    check_media_type(content_type)
    return validate(model, decode_json(body))


__all__ = ["check_media_type", "check_size", "decode_json", "parse_request", "validate", "validation_details"]
