"""Bytes -> request parsing: every transport and schema error is a typed 4xx naming what is wrong."""

from __future__ import annotations

import gzip
import json

import pytest

from expctr.serving.errors import (
    InvalidEncoding,
    InvalidJSON,
    InvalidRequest,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
)
from expctr.serving.requests import parse_request
from expctr.serving.schemas import ExplainRequest, PredictRequest

CT = "application/json"


def parse(body, ct=CT, limit=4096, model=PredictRequest):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(model, raw, ct, limit)


def test_a_valid_request_parses():
    req = parse({"user_id": "1m_1", "candidates": ["a", "b"], "explain": True})
    assert (req.user_id, req.candidates, req.explain, req.history) == ("1m_1", ["a", "b"], True, None)
    cold = parse({"history": [{"item_id": "a", "rating": 5.0}, {"item_id": "b", "rating": 2}], "candidates": ["c"]})
    assert [h.rating for h in cold.history] == [5.0, 2.0] and cold.explain is False
    assert parse({"user_id": "u", "item_id": "x"}, model=ExplainRequest).item_id == "x"
    assert parse(b'{"user_id": "u", "candidates": ["x"]}', ct="application/json; charset=utf-8").user_id == "u"


@pytest.mark.parametrize("body, ct, error, words", [
    (b"\xff\xfe{}", CT, InvalidEncoding, "UTF-8"),
    (b'{"user_id": "u", "candidates": [', CT, InvalidJSON, "not valid JSON"),
    (b"", CT, InvalidJSON, "empty"),
    (b'{"user_id": "u"}', "text/plain", UnsupportedMediaType, "application/json"),
    (b'{"user_id": "u"}', None, UnsupportedMediaType, "none"),
    (b"[1, 2]", CT, InvalidRequest, "JSON object"),
    (b"null", CT, InvalidRequest, "JSON object"),
    (b'{"user_id": "u"}', CT, InvalidRequest, "candidates: required field is missing"),
    (b'{"user_id": "u", "candidates": ["a"], "top_k": 3}', CT, InvalidRequest, "top_k: unknown field"),
    (b'{"user_id": 7, "candidates": ["a"]}', CT, InvalidRequest, "user_id: Input should be a valid string"),
    (b'{"user_id": "u", "candidates": "a"}', CT, InvalidRequest, "candidates: Input should be a valid list"),
    (b'{"user_id": "u", "candidates": [1]}', CT, InvalidRequest, "candidates.0: Input should be a valid string"),
    (b'{"user_id": "u", "candidates": ["a"], "explain": "yes"}', CT, InvalidRequest, "explain: Input should be a valid boolean"),
    (b'{"candidates": ["a"]}', CT, InvalidRequest, "exactly one of `user_id`"),
    (b'{"user_id": "u", "history": [], "candidates": ["a"]}', CT, InvalidRequest, "exactly one of `user_id`"),
    (b'{"history": [{"item_id": "a"}], "candidates": ["b"]}', CT, InvalidRequest, "history.0.rating: required"),
    (b'{"history": [{"item_id": "a", "rating": "5"}], "candidates": ["b"]}', CT, InvalidRequest, "history.0.rating"),
    (b'{"user_id": "", "candidates": ["a"]}', CT, InvalidRequest, "user_id: String should have at least 1 character"),
    (b"[" * 5000 + b"]" * 5000, CT, InvalidJSON, "nests too deeply"),
])
def test_bad_bytes_get_a_typed_error(body, ct, error, words):
    with pytest.raises(error) as exc:
        parse(body, ct=ct, limit=1 << 20)
    assert words in exc.value.message, exc.value.message
    assert 400 <= exc.value.status < 500
    assert exc.value.body()["error"]["code"] == error.code


def test_size_limit_is_checked_before_parsing():
    with pytest.raises(PayloadTooLarge, match="limit is 1024"):
        parse(b'{"user_id": "u", "candidates": ["' + b"a" * 2000 + b'"]}', limit=1024)


def test_error_body_names_the_field_and_lists_every_violation():
    with pytest.raises(RequestError) as exc:
        parse({"user_id": 1, "candidates": [1, 2], "extra": 0})
    body = exc.value.body()["error"]
    assert body["field"] == "user_id" and "(and 3 more)" in body["message"]
    assert {d["field"] for d in body["details"]} == {"user_id", "candidates.0", "candidates.1", "extra"}


def test_content_codings_and_lone_surrogates():
    body = json.dumps({"user_id": "u", "candidates": ["a"]}).encode()
    assert parse_request(PredictRequest, gzip.compress(body), CT, 4096, "gzip").user_id == "u"
    assert parse_request(PredictRequest, body, CT, 4096, "identity").user_id == "u"
    for raw, coding, error, words in [
        (body, "gzip", UnsupportedMediaType, "not gzip data"),
        (gzip.compress(body)[:-4], "gzip", UnsupportedMediaType, "truncated"),
        (gzip.compress(body) + b"x", "gzip", UnsupportedMediaType, "data after the gzip stream"),
        (body, "deflate", UnsupportedMediaType, "'deflate' is not supported"),
        (body, "gzip, gzip", UnsupportedMediaType, "is not supported"),
        (gzip.compress(b" " * 10_000), "gzip", PayloadTooLarge, "decodes to more than 4096 bytes"),
        (b'{"user_id": "\\ud800", "candidates": ["a"]}', None, InvalidEncoding, "user_id: a string holds a lone"),
        (b'{"user_id": "u", "candidates": ["a", "\\udc00b"]}', None, InvalidEncoding, "candidates.1:"),
    ]:
        with pytest.raises(error, match=words):
            parse_request(PredictRequest, raw, CT, 4096, coding)
    # a surrogate pair is one valid character
    assert parse(b'{"user_id": "\\ud83d\\ude00", "candidates": ["a"]}').user_id == "\U0001f600"
