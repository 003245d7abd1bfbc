"""The BentoML service over HTTP, in-process (`ExpCTR.to_asgi()`): endpoints, batching, and bad input."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import opens_with_verdict

from expctr.llm.explanations import stance

JSON = {"content-type": "application/json"}


def post(http, path, body, headers=JSON):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=data, headers=headers)


@pytest.fixture(scope="module")
def ids(model_pair):
    """Real ids of the packaged tiny project (the service loads the same bundle)."""
    users = list(model_pair.users)
    return {"user": users[0], "other": users[1], "items": model_pair.item_ids}


def test_health_readiness_and_openapi(http):
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    spec = http.get("/docs.json").json()
    assert {"/predict", "/explain"} <= set(spec["paths"])
    props = json.dumps(spec["paths"]["/predict"])
    assert "candidates" in props and "explain" in props


def test_predict_ranks_candidates_with_versions(http, ids):
    r = post(http, "/predict", {"user_id": ids["user"], "candidates": ids["items"][:100]})
    assert r.status_code == 200, r.text
    body = r.json()
    probs = [it["p_click"] for it in body["items"]]
    assert body["scorer"] == "id_model" and len(probs) == 100 and probs == sorted(probs, reverse=True)
    assert set(body["versions"]) == {"model", "ctr_model", "explainer_adapter", "base_llm", "git_commit"}


def test_explain_and_explained_predict(http, ids):
    r = post(http, "/explain", {"user_id": ids["user"], "item_id": ids["items"][5]})
    assert r.status_code == 200, r.text
    item = r.json()["item"]
    assert item["explanation"].startswith("The user will ") and isinstance(item["faithful"], bool)
    r = post(http, "/predict", {"user_id": ids["user"], "candidates": ids["items"][5:7], "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scorer"] == "expctr_aug" and all(it["explanation"] for it in body["items"])
    assert next(it for it in body["items"] if it["item_id"] == ids["items"][5])["cached"] is True


def test_served_explanations_take_the_stance_of_their_probability(http, ids):
    """Real served responses: each explanation's verdict (flag and text) is the one its p_click implies."""
    for user, cands in ((ids["user"], ids["items"][8:12]), (ids["other"], ids["items"][12:15])):
        r = post(http, "/predict", {"user_id": user, "candidates": cands, "explain": True})
        assert r.status_code == 200, r.text
        body = r.json()
        threshold = body["decision_threshold"]
        for it in body["items"]:
            positive = it["p_click"] >= threshold
            assert it["stance"] == ("enjoy" if positive else "not_enjoy") and it["stance_source"] == "score", it
            assert opens_with_verdict(it["explanation"], positive) and stance(it["explanation"]) == (
                1 if positive else -1), it
            assert it["p_source"] in ("expctr_aug", "id_model")
            assert all(isinstance(it[k], bool) for k in ("faithful", "grounded", "complete", "regenerated"))
    one = post(http, "/explain", {"user_id": ids["user"], "item_id": ids["items"][9]}).json()
    assert one["item"]["stance"] == ("enjoy" if one["item"]["p_click"] >= one["decision_threshold"] else "not_enjoy")


def test_a_gzip_body_is_decoded(http, ids):
    body = gzip.compress(json.dumps({"user_id": ids["user"], "candidates": ids["items"][:3]}).encode())
    r = http.post("/predict", content=body, headers={**JSON, "content-encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3


def test_concurrent_ctr_requests_all_succeed(http, ids):
    """Concurrent /predict calls share the batchable `score_rows` (the served test checks the batcher's metric)."""
    def one(k):
        return post(http, "/predict", {"user_id": ids["user"], "candidates": ids["items"][k:k + 50]})

    with ThreadPoolExecutor(8) as pool:
        codes = [r.status_code for r in pool.map(one, range(16))]
    assert codes == [200] * 16


def test_users_do_not_see_each_others_data(http, ids):
    a = post(http, "/predict", {"user_id": ids["user"], "candidates": ids["items"][:20]}).json()
    b = post(http, "/predict", {"user_id": ids["other"], "candidates": ids["items"][:20]}).json()
    assert a["user"] == ids["user"] and b["user"] == ids["other"]
    assert [i["p_click"] for i in a["items"]] != [i["p_click"] for i in b["items"]]


# --------------------------------------------------------------------------------------- bad-input matrix
U, ITEMS = "<user>", "<items>"


def _fill(value, ids):
    if value == U:
        return ids["user"]
    if isinstance(value, str) and value.startswith("<item"):
        return ids["items"][int(value[5:-1])] if value != ITEMS else value
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


BAD = [
    # (name, path, body (dict -> JSON, bytes raw), headers, status, code, words)
    ("invalid json", "/predict", b'{"user_id": ', JSON, 400, "invalid_json", "not valid JSON"),
    ("not utf-8", "/predict", b'{"user_id": "\xff\xfe"}', JSON, 400, "invalid_encoding", "UTF-8"),
    ("empty body", "/predict", b"", JSON, 400, "invalid_json", "empty"),
    ("deep nesting", "/predict", b"[" * 20000 + b"]" * 20000, JSON, 400, "invalid_json", "nests too deeply"),
    ("text/plain", "/predict", {"user_id": U, "candidates": ["<item0>"]}, {"content-type": "text/plain"}, 415,
     "unsupported_media_type", "application/json"),
    ("huge payload", "/predict", {"user_id": U, "candidates": ["x" * 200] * 400}, JSON, 413, "payload_too_large",
     "limit is 65536"),
    ("array body", "/predict", [1, 2], JSON, 422, "invalid_request", "JSON object"),
    ("missing candidates", "/predict", {"user_id": U}, JSON, 422, "invalid_request",
     "candidates: required field is missing"),
    ("extra field", "/predict", {"user_id": U, "candidates": ["<item0>"], "top_k": 5}, JSON, 422,
     "invalid_request", "top_k: unknown field"),
    ("user id not a string", "/predict", {"user_id": 5, "candidates": ["<item0>"]}, JSON, 422, "invalid_request",
     "user_id: Input should be a valid string"),
    ("candidates not a list", "/predict", {"user_id": U, "candidates": "<item0>"}, JSON, 422, "invalid_request",
     "candidates: Input should be a valid list"),
    ("candidate ids not strings", "/predict", {"user_id": U, "candidates": [1, 2]}, JSON, 422, "invalid_request",
     "candidates.0: Input should be a valid string"),
    ("explain not a bool", "/predict", {"user_id": U, "candidates": ["<item0>"], "explain": "yes"}, JSON, 422,
     "invalid_request", "explain: Input should be a valid boolean"),
    ("user and history", "/predict", {"user_id": U, "history": [], "candidates": ["<item0>"]}, JSON, 422,
     "invalid_request", "exactly one of"),
    ("no user", "/predict", {"candidates": ["<item0>"]}, JSON, 422, "invalid_request", "exactly one of"),
    ("history without rating", "/predict", {"history": [{"item_id": "<item1>"}], "candidates": ["<item0>"]}, JSON,
     422, "invalid_request", "history.0.rating: required field is missing"),
    ("rating as string", "/predict", {"history": [{"item_id": "<item1>", "rating": "4"}], "candidates": ["<item0>"]},
     JSON, 422, "invalid_request", "history.0.rating: Input should be a valid number"),
    ("unknown user", "/predict", {"user_id": "no-such-user", "candidates": ["<item0>"]}, JSON, 404, "unknown_id",
     "unknown user_id 'no-such-user'"),
    ("unknown candidate", "/predict", {"user_id": U, "candidates": ["<item0>", "Not A Film (2099)"]}, JSON, 404,
     "unknown_id", "candidates.1: unknown item id 'Not A Film (2099)'"),
    ("empty candidates", "/predict", {"user_id": U, "candidates": []}, JSON, 422, "invalid_request",
     "candidates is empty"),
    ("duplicate candidates", "/predict", {"user_id": U, "candidates": ["<item0>", "<item0>"]}, JSON, 422,
     "duplicate_ids", "more than once"),
    ("too many candidates", "/predict", {"user_id": U, "candidates": [f"<item{i}>" for i in range(201)]}, JSON, 422,
     "limit_exceeded", "limit is 200"),
    ("too many to explain", "/predict", {"user_id": U, "candidates": [f"<item{i}>" for i in range(11)],
                                         "explain": True}, JSON, 422, "limit_exceeded", "with explain=true"),
    ("history too long", "/predict", {"history": [{"item_id": f"<item{i}>", "rating": 4.0} for i in range(51)],
                                      "candidates": ["<item60>"]}, JSON, 422, "limit_exceeded", "limit is 50"),
    ("duplicate history", "/predict", {"history": [{"item_id": "<item1>", "rating": 4.0}] * 2,
                                       "candidates": ["<item0>"]}, JSON, 422, "duplicate_ids", "history lists"),
    ("rating out of range", "/predict", {"history": [{"item_id": "<item1>", "rating": 11.0}],
                                         "candidates": ["<item0>"]}, JSON, 422, "invalid_request", "rating range"),
    ("NaN rating", "/predict", b'{"history": [{"item_id": "<item1>", "rating": NaN}], "candidates": ["<item0>"]}',
     JSON, 422, "invalid_request", "rating range"),
    ("unknown history item", "/predict", {"history": [{"item_id": "nope", "rating": 4.0}],
                                          "candidates": ["<item0>"]}, JSON, 404, "unknown_id", "history.0.item_id"),
    ("explain: missing item", "/explain", {"user_id": U}, JSON, 422, "invalid_request", "item_id: required"),
    ("explain: unknown item", "/explain", {"user_id": U, "item_id": "nope"}, JSON, 404, "unknown_id",
     "item_id: unknown item id 'nope'"),
    ("explain: extra field", "/explain", {"user_id": U, "item_id": "<item0>", "candidates": []}, JSON, 422,
     "invalid_request", "candidates: unknown field"),
    # valid JSON that is not Unicode text: a lone UTF-16 surrogate escape, in a value or in a key
    ("lone surrogate", "/predict", b'{"user_id": "\\ud800", "candidates": ["<item0>"]}', JSON, 400,
     "invalid_encoding", "user_id: a string holds a lone UTF-16 surrogate"),
    ("lone surrogate in a list", "/explain", b'{"user_id": "<user>", "item_id": "x\\udfffy"}', JSON, 400,
     "invalid_encoding", "item_id: a string holds a lone UTF-16 surrogate"),
    ("lone surrogate key", "/predict", b'{"\\ud800": 1, "user_id": "<user>", "candidates": ["<item0>"]}', JSON,
     400, "invalid_encoding", "lone UTF-16 surrogate"),
    # content codings: gzip is decoded, anything else (or a body that is not what its header says) is a 415
    ("gzip header, plain body", "/predict", {"user_id": U, "candidates": ["<item0>"]},
     {**JSON, "content-encoding": "gzip"}, 415, "unsupported_media_type", "is not gzip data"),
    ("truncated gzip", "/predict", gzip.compress(b'{"user_id": "<user>", "candidates": ["<item0>"]}')[:-6],
     {**JSON, "content-encoding": "gzip"}, 415, "unsupported_media_type", "truncated"),
    ("brotli", "/predict", {"user_id": U, "candidates": ["<item0>"]}, {**JSON, "content-encoding": "br"}, 415,
     "unsupported_media_type", "Content-Encoding 'br' is not supported"),
    ("gzip bomb", "/predict", gzip.compress(b'{"user_id": "' + b" " * 2_000_000 + b'"}'),
     {**JSON, "content-encoding": "gzip"}, 413, "payload_too_large", "decodes to more than 65536 bytes"),
]


@pytest.mark.parametrize("name, path, body, headers, status, code, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_typed_4xx(http, ids, name, path, body, headers, status, code, words):
    if isinstance(body, bytes) and not body.startswith(b"\x1f\x8b"):
        for key in ("<item0>", "<item1>", U):
            body = body.replace(key.encode(), json.dumps(_fill(key, ids))[1:-1].encode())
    else:
        body = _fill(body, ids)
    r = post(http, path, body, headers)
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert_typed(r, status, code)
    err = r.json()["error"]
    assert words in err["message"], err


def test_the_matrix_is_large_enough():
    assert len(BAD) >= 25


def assert_typed(r, status: int, code: str, field: str | None = None) -> dict:
    """The project's error body: JSON {"error": {"code", "message", "field"[, "details"]}} and nothing else."""
    assert r.status_code == status and r.headers["content-type"] == "application/json", (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and {"code", "message", "field"} <= set(body["error"]) <= {
        "code", "message", "field", "details"}, body
    err = body["error"]
    assert err["code"] == code and err["message"], err
    if field is not None:
        assert err["field"] == field, err
    return err


@pytest.mark.parametrize("path, body, field", [
    ("/explain", {"user_id": U, "item_id": "nope"}, "item_id"),  # a single id: no list index
    ("/predict", {"user_id": U, "candidates": ["<item0>", "nope", "nada"]}, "candidates.1"),
    ("/predict", {"history": [{"item_id": "<item1>", "rating": 4.0}, {"item_id": "nope", "rating": 4.0}],
                  "candidates": ["<item0>"]}, "history.1.item_id"),
    ("/predict", {"history": [{"item_id": "<item1>", "rating": "4"}], "candidates": ["<item0>"]}, "history.0.rating"),
    ("/predict", {"user_id": 5, "candidates": ["<item0>"]}, "user_id"),
    ("/predict", {"user_id": "no-such-user", "candidates": ["<item0>"]}, "user_id"),
    ("/predict", {"user_id": U, "candidates": []}, "candidates"),
])
def test_error_fields_name_what_the_client_sent(http, ids, path, body, field):
    r = post(http, path, _fill(body, ids))
    assert r.status_code in (404, 422) and r.json()["error"]["field"] == field, r.text


@pytest.mark.parametrize("method, path, status, code", [
    ("POST", "/admin", 404, "not_found"),
    ("GET", "/no/such/page", 404, "not_found"),
    ("GET", "/predict", 405, "method_not_allowed"),
    ("PUT", "/predict", 405, "method_not_allowed"),
    ("DELETE", "/explain", 405, "method_not_allowed"),
])
def test_the_frameworks_own_errors_get_the_typed_body(http, method, path, status, code):
    r = http.request(method, path, content=b"{}", headers=JSON)
    err = assert_typed(r, status, code, field=None)
    assert err["field"] is None and path in err["message"]
    if status == 405:
        assert r.headers["allow"] == "POST" and "use POST" in err["message"]


def test_an_oversized_body_is_a_typed_413_declared_or_streamed(http, ids):
    big = json.dumps({"user_id": ids["user"], "candidates": ["x" * 200] * 400}).encode()
    assert_typed(post(http, "/predict", big), 413, "payload_too_large")

    def chunks():  # no Content-Length: the guard counts what arrives
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    assert_typed(http.post("/explain", content=chunks(), headers=JSON), 413, "payload_too_large")
