"""Bytes on the wire -> a validated request, or a typed RequestError that says what is wrong.

Order of checks, cheapest first: size, content coding (identity, or gzip decoded here within the size limit;
anything else is a 415), media type, UTF-8, JSON syntax, no lone UTF-16 surrogate escape in any string
(`"\\ud800"` is valid JSON but not Unicode text: no later layer could encode it), a JSON object at the top,
schema. Pydantic's messages are rewritten as `field.path: message` so a client sees which field broke which
rule.
"""

from __future__ import annotations

import json
import re
import zlib
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
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_media_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type or 'none'!r}")


def check_size(n_bytes: int, limit: int) -> None:
    if n_bytes > limit:
        raise PayloadTooLarge(f"request body is {n_bytes} bytes; the limit is {limit}")


SUPPORTED_CODINGS = ("identity", "gzip")


def decode_content(body: bytes, content_encoding: str | None, max_body_bytes: int) -> bytes:
    """The body with its Content-Encoding undone: identity as is, gzip decompressed (at most `max_body_bytes`
    decoded bytes, so a small bomb cannot grow past the limit). Any other coding, a list of codings, or a
    body that is not what its coding says is refused with 415 (RFC 9110: the format problem may be found by
    inspecting the data)."""
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {content_encoding!r} is not supported; send the body "
                                   f"uncompressed or as gzip", field="content-encoding")
    inflater = zlib.decompressobj(wbits=31)  # gzip header and trailer
    try:
        out = inflater.decompress(body, max_body_bytes + 1)
        complete = inflater.eof and not inflater.unused_data
    except zlib.error as exc:
        raise UnsupportedMediaType(f"the body is declared Content-Encoding: gzip but is not gzip data ({exc})",
                                   field="content-encoding") from None
    if len(out) > max_body_bytes:
        raise PayloadTooLarge(f"the gzip body decodes to more than {max_body_bytes} bytes; the limit is "
                              f"{max_body_bytes}")
    if not complete:
        raise UnsupportedMediaType("the body is declared Content-Encoding: gzip but is truncated or has data "
                                   "after the gzip stream", field="content-encoding")
    return out


def _lone_surrogate(value: Any) -> str | None:
    """The path of a string (key or value) holding a lone UTF-16 surrogate, or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if any("\ud800" <= c <= "\udfff" for c in node):
                return path or "(body)"
        elif isinstance(node, dict):
            for k, v in node.items():
                if any("\ud800" <= c <= "\udfff" for c in k):  # name the key by an ASCII escape of it
                    return ".".join(p for p in (path, k.encode("ascii", "backslashreplace").decode()) if p)
                stack.append((v, f"{path}.{k}" if path else str(k)))
        elif isinstance(node, list):
            stack.extend((v, f"{path}.{n}" if path else str(n)) for n, v in enumerate(node))
    return None


def decode_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEncoding(f"request body is not valid UTF-8 (byte {exc.start}: {body[exc.start:exc.start + 1]!r})"
                              ) from None
    if not text.strip():
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                          ) from None
    except RecursionError:
        raise InvalidJSON("request body nests too deeply") from None
    # strict UTF-8 decoding refuses encoded surrogates, so only a \uD800-\uDFFF escape can make one: the
    # tree is walked only when the text has such an escape (a valid pair is one too, and passes the walk)
    if _SURROGATE_ESCAPE.search(text) and (where := _lone_surrogate(data)) is not None:
        raise InvalidEncoding(f"{where}: a string holds a lone UTF-16 surrogate escape (such as \\ud800), "
                              "which is not valid Unicode text", field=where)
    return data


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


def parse_request(model: type[M], body: bytes, content_type: str | None, max_body_bytes: int,
                  content_encoding: str | None = None) -> M:
    """Every transport- and schema-level check; the domain checks (ids, limits) live in the predictor.
    `body` is as received (`content_encoding` undone here)."""
    check_size(len(body), max_body_bytes)
    body = decode_content(body, content_encoding, max_body_bytes)
    check_media_type(content_type)
    return validate(model, decode_json(body))


__all__ = ["SUPPORTED_CODINGS", "check_media_type", "check_size", "decode_content", "decode_json", "parse_request",
           "validate", "validation_details"]
