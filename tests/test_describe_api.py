"""The endpoint backend against a real HTTP stub of /v1/chat/completions on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from describe_stub import Stub

from anomalens.describe import (
    API_KEY_ENV,
    DescribeError,
    EndpointBackend,
    EndpointSettings,
    describe_category,
    generate_sentences,
)


@pytest.fixture
def stub():
    server = Stub()
    yield server
    server.close()


def backend(stub, **kw):
    return EndpointBackend(stub.url, EndpointSettings(model="tiny", backoff=0.01, **kw))


def test_defects_round_trip_with_key_and_prompt(stub, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sekret")
    stub.answer(json.dumps({"defects": ["1. Bent pin", "bent pins", "Screw", "cracked head", "blue"]}))
    stub.answer("```json\n" + json.dumps({"defects": ["stripped thread", "rust spot"]}) + "\n```")
    result = describe_category(backend(stub), "screw", n=3)
    assert result.kept == ["bent pin", "cracked head", "stripped thread"]
    assert ("Screw", "category name") in result.dropped and ("blue", "not a defect") in result.dropped
    assert ("rust spot", "over --n 3") in result.dropped
    first = stub.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sekret"
    assert first["body"]["model"] == "tiny" and "screw" in first["body"]["messages"][-1]["content"]
    assert [r["body"]["seed"] for r in stub.requests] == [0, 1]


def test_server_errors_are_retried_then_reported(stub):
    stub.script.append((503, "busy", 0))
    stub.answer(json.dumps({"defects": ["dent"]}))
    assert backend(stub).defect_items("can", 1, None, 0) == ["dent"]
    stub.script[:] = [(500, "boom", 0)] * 3
    with pytest.raises(DescribeError, match=r"HTTP 500.*after 3 attempts"):
        backend(stub).defect_items("can", 1, None, 0)


def test_client_errors_fail_at_once_with_a_hint(stub):
    stub.script.append((401, {"error": "bad key"}, 0))
    with pytest.raises(DescribeError, match=f"HTTP 401.*{API_KEY_ENV}"):
        backend(stub).defect_items("can", 1, None, 0)
    assert len(stub.requests) == 1


def test_timeout_is_retried_and_reported(stub):
    stub.answer(json.dumps({"defects": ["dent"]}), delay=1.0)
    stub.answer(json.dumps({"defects": ["dent"]}), delay=1.0)
    start = time.perf_counter()
    with pytest.raises(DescribeError, match=r"no answer within 0.2 s \(after 2 attempts\)"):
        backend(stub, timeout=0.2, retries=1).defect_items("can", 1, None, 0)
    assert time.perf_counter() - start < 2.0


def test_malformed_answers(stub):
    stub.script.append((200, "not json at all", 0))  # the HTTP body itself is broken
    with pytest.raises(DescribeError, match="not an OpenAI chat completion"):
        backend(stub).defect_items("can", 1, None, 0)
    stub.script.append((200, {"choices": []}, 0))
    with pytest.raises(DescribeError, match="not an OpenAI chat completion"):
        backend(stub).defect_items("can", 1, None, 0)
    # The model's text is not JSON: another attempt is made, and the error is said if none works.
    stub.answer("Sure! Here are some defects: dent, scratch")
    stub.answer('{"items": ["dent"]}')
    with pytest.raises(DescribeError, match="no usable answer in 2 attempts"):
        describe_category(backend(stub), "can", n=2, max_attempts=2)
    stub.answer("Sure!")
    stub.answer('Here you go: {"defects": ["dented lid"]} hope it helps')
    assert describe_category(backend(stub), "can", n=1, max_attempts=2).kept == ["dented lid"]


def test_unreachable_endpoint():
    dead = EndpointBackend("http://127.0.0.1:9/v1", EndpointSettings(retries=0, timeout=2))
    with pytest.raises(DescribeError, match="cannot connect"):
        dead.defect_items("can", 1, None, 0)


def test_bad_url():
    with pytest.raises(DescribeError, match="embedded"):
        EndpointBackend("localhost:8080")


def test_ensemble_batches_until_enough(stub):
    stub.answer(
        json.dumps({"sentences": ["A photo of a clean surface", "a photo of a clean surface.", "1. An intact."]})
    )
    stub.answer(
        json.dumps({"sentences": ["a photo of a flawless screw.", "a close-up of an even coating.", "x " * 40]})
    )
    stub.answer(json.dumps({"sentences": ["a cropped photo of a smooth panel.", "one more."]}))
    kept, dropped = generate_sentences(backend(stub), "normal", n=4, batch_size=3, forbidden_words=["screw"])
    assert kept == [
        "a photo of a clean surface.",
        "an intact.",
        "a close-up of an even coating.",
        "a cropped photo of a smooth panel.",
    ]
    reasons = [why for _, why in dropped]
    assert reasons == ["duplicate", "names a specific object", "too long", "over --n 4"]
    assert [r["body"]["seed"] for r in stub.requests] == [0, 1, 2]
    assert (
        "normal" in stub.requests[0]["body"]["messages"][-1]["content"]
        or "flawless" in stub.requests[0]["body"]["messages"][-1]["content"]
    )
