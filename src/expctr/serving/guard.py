"""The ASGI middleware in front of the service: bad input never reaches it, every error is typed.

Two jobs, both plain ASGI (no web framework imported here):

- the JSON routes' checks (size, content coding, media type, UTF-8, JSON, schema: `requests.parse_request`)
  run before the framework parses anything; a refused request is answered here with its typed 4xx, a gzip
  body is handed on decoded;
- an error response the framework writes itself (no such route, wrong method, not ready, an unexpected
  failure) is rewritten into the project's body (`errors.error_for_status`); a body that already is one
  passes unchanged. Only error responses are held back (they are small); others stream through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from expctr.serving.errors import InternalError, RequestError, error_for_status
from expctr.serving.requests import check_size, decode_content, parse_request

JSON_TYPE = b"application/json"


def json_payload(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def send_json(send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    payload = json_payload(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [*(headers or []), (b"content-type", JSON_TYPE),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def is_typed(body: bytes) -> bool:
    """Already the project's error body (written by the endpoints or this guard)?"""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, dict) and "code" in err and "message" in err


def framework_message(status: int, body: bytes, method: str, path: str, allow: str | None,
                      routes: Sequence[str] = ()) -> str:
    """What the framework's own error said, as a sentence for the typed body (`routes`: the JSON routes)."""
    if status == 404:
        api = " and ".join(f"POST {r}" for r in routes)
        return f"no route {method} {path}" + (f"; the API is {api} (see GET /docs)" if api else "")
    if status == 405:
        return f"{method} is not allowed on {path}" + (f"; use {allow}" if allow else "")
    try:
        said = json.loads(body)
        if isinstance(said, list) and said:  # BentoML wraps some errors in a one-element list
            said = said[0]
        if isinstance(said, dict):
            said = said.get("error") or said.get("detail")
    except ValueError:
        said = body.decode("utf-8", "replace")
    said = str(said or "").strip()
    return said or f"HTTP {status}"


class TypedErrors:
    """`send` with error responses rewritten into the typed body (see the module docstring); `started`:
    a response has begun (so an exception after it can no longer be answered)."""

    def __init__(self, send, method: str, path: str, routes: Sequence[str] = ()):
        self.send, self.method, self.path, self.routes = send, method, path, routes
        self.started = False
        self._start: dict[str, Any] | None = None  # the held start message of an error response
        self._body = bytearray()

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                self._start = message
                return
        if self._start is None or message["type"] != "http.response.body":
            return await self.send(message)
        self._body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        body, start = bytes(self._body), self._start
        if is_typed(body):
            await self.send(start)
            return await self.send({"type": "http.response.body", "body": body})
        headers = [(k, v) for k, v in start.get("headers", [])
                   if k.lower() not in (b"content-type", b"content-length")]
        allow = next((v.decode("latin-1") for k, v in headers if k.lower() == b"allow"), None)
        status = start["status"]
        err = error_for_status(status, framework_message(status, body, self.method, self.path, allow, self.routes))
        await send_json(self.send, status, err.body(), headers)


class RequestGuard:
    """The middleware: `routes` maps each JSON route (POST) to its request model."""

    def __init__(self, app, routes: Mapping[str, type[BaseModel]], max_body_bytes: int):
        self.app, self.routes, self.max_body_bytes = app, dict(routes), max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope.get("method", ""), scope.get("path", "")
        send = TypedErrors(send, method, path, tuple(self.routes))
        model = self.routes.get(path) if method == "POST" else None
        if model is None:
            return await self._call_app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = bytearray()
        try:
            declared = headers.get("content-length", "")
            if declared.isdigit():
                check_size(int(declared), self.max_body_bytes)  # refuse before reading
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                check_size(len(body), self.max_body_bytes)
                if not message.get("more_body", False):
                    break
            encoding = headers.get("content-encoding")
            body = decode_content(bytes(body), encoding, self.max_body_bytes)
            parse_request(model, body, headers.get("content-type"), self.max_body_bytes)
        except RequestError as exc:
            return await send_json(send.send, exc.status, exc.body())  # typed already
        if encoding is not None:  # the framework reads the decoded body, as if it had been sent uncompressed
            kept = [(k, v) for k, v in scope.get("headers", [])
                    if k.lower() not in (b"content-encoding", b"content-length")]
            scope = {**scope, "headers": [*kept, (b"content-length", str(len(body)).encode())]}

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self._call_app(scope, replay, send)

    async def _call_app(self, scope, receive, send: TypedErrors):
        """The app; an exception it lets escape before answering is answered with a typed 500 (then raised
        on, so the server still logs it)."""
        try:
            return await self.app(scope, receive, send)
        except Exception:
            if not send.started:
                await send_json(send.send, 500, InternalError(
                    "an unexpected error has occurred; the server log has the details").body())
            raise


__all__ = ["RequestGuard", "TypedErrors", "framework_message", "is_typed", "json_payload", "send_json"]
