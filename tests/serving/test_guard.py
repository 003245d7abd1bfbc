"""The request guard over a small Starlette app: every error it lets out is the typed body.

The real service's routes are covered over HTTP (test_http.py, test_bento_serve.py); this app can also fail
in the ways the service is not supposed to (an escaping exception, a 503 from the framework).
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from expctr.serving.errors import UnknownId, error_for_status
from expctr.serving.guard import RequestGuard
from expctr.serving.schemas import ExplainRequest


async def boom(request):
    raise RuntimeError("a bug")


async def not_ready(request):
    raise HTTPException(status_code=503, detail="Service is not ready")


async def typed(request):
    return JSONResponse(UnknownId("item_id: unknown item id 'x'", field="item_id").body(), status_code=404)


async def stream(request):
    return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")


async def explain(request):
    return PlainTextResponse((await request.body()).decode())


@pytest.fixture(scope="module")
def client():
    app = Starlette(routes=[Route("/boom", boom), Route("/ready", not_ready), Route("/typed", typed),
                            Route("/stream", stream), Route("/explain", explain, methods=["POST"])])
    guarded = RequestGuard(app, routes={"/explain": ExplainRequest}, max_body_bytes=1024)
    with TestClient(guarded, raise_server_exceptions=False) as c:
        yield c


def test_a_framework_500_is_typed(client):
    r = client.get("/boom")  # Starlette answers the exception with its plain-text 500
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"code": "internal_error", "field": None, "message": "Internal Server Error"}}


def test_an_exception_escaping_past_the_guard_is_a_typed_500():
    async def raw(scope, receive, send):  # an ASGI app with no error handling of its own
        raise RuntimeError("a bug")

    c = TestClient(RequestGuard(raw, routes={}, max_body_bytes=1024), raise_server_exceptions=False)
    r = c.get("/anything")  # (no `with`: this app has no lifespan either)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"code": "internal_error", "field": None,
                                  "message": "an unexpected error has occurred; the server log has the details"}}


def test_a_framework_status_keeps_its_status_and_says_what_it_said(client):
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["error"] == {"code": "unavailable", "field": None,
                                                          "message": "Service is not ready"}


def test_a_typed_body_passes_unchanged(client):
    r = client.get("/typed")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_id" and r.json()["error"]["field"] == "item_id"


def test_successful_responses_stream_through(client):
    r = client.get("/stream")
    assert r.status_code == 200 and r.text == "ab" and r.headers["content-type"].startswith("text/plain")
    r = client.post("/explain", json={"user_id": "u", "item_id": "i"})
    assert r.status_code == 200 and r.json() == {"user_id": "u", "item_id": "i"}  # the body is replayed


def test_an_unlisted_status_keeps_its_number():
    err = error_for_status(418, "teapot")
    assert (err.status, err.code, err.body()) == (418, "http_418", {"error": {"code": "http_418", "message": "teapot",
                                                                          "field": None}})
