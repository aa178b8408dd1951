"""What the emulator refuses: no credentials, malformed batches, big bodies, bad params."""

from __future__ import annotations

import socket
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

AUTH = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


def _create_error(sdk: anthropic.Anthropic, requests: list[dict[str, Any]]) -> dict[str, Any]:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    return body


def test_no_credentials_is_401_and_every_answer_has_a_request_id(emulator_factory) -> None:
    emu = emulator_factory()
    url = f"{emu.base_url}/v1/messages/batches"

    anonymous = httpx2.get(url, headers={"anthropic-version": "2023-06-01"})
    with_key = httpx2.get(url, headers=AUTH)
    with_bearer = httpx2.get(
        url, headers={"Authorization": "Bearer abc", "anthropic-version": "2023-06-01"}
    )

    assert anonymous.status_code == 401
    assert anonymous.json()["type"] == "error"
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert (with_key.status_code, with_bearer.status_code) == (200, 200)
    for response in (anonymous, with_key, with_bearer):
        assert response.headers["request-id"].startswith("req_")
    assert anonymous.headers["request-id"] != with_key.headers["request-id"]


def test_sdk_without_a_key_gets_an_authentication_error(emulator_factory) -> None:
    emu = emulator_factory()
    # This SDK sends the key as a bearer token; omitting that header leaves no credentials.
    sdk = anthropic.Anthropic(
        api_key="unused", base_url=emu.base_url, default_headers={"Authorization": anthropic.Omit()}
    )

    with pytest.raises(anthropic.AuthenticationError):
        sdk.messages.batches.list()


def test_missing_api_version_is_rejected(emulator_factory) -> None:
    emu = emulator_factory()

    response = httpx2.get(f"{emu.base_url}/v1/messages/batches", headers={"x-api-key": "k"})

    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


def test_unknown_routes_are_404(emulator_factory) -> None:
    emu = emulator_factory()

    for method, path in [
        ("GET", "/v1/messages"),
        ("GET", "/v1/messages/batches/x/unknown"),
        ("PUT", "/v1/messages/batches/x"),
        ("POST", "/v1/messages/batches/x"),
        ("GET", "/"),
    ]:
        response = httpx2.request(method, f"{emu.base_url}{path}", headers=AUTH)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["type"] == "not_found_error"


def test_empty_batch_is_rejected(emulator_factory, client) -> None:
    body = _create_error(client(emulator_factory(), max_retries=0), [])

    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "requests: List should have at least 1 item after validation, not 0",
    }


def test_more_than_100_000_requests_are_rejected(emulator_factory, client) -> None:
    emu = emulator_factory()
    requests = [{"custom_id": f"r{i}", "params": {}} for i in range(100_001)]

    body = _create_error(client(emu, max_retries=0), requests)

    assert body["error"]["message"] == (
        "requests: List should have at most 100000 items after validation, not 100001"
    )
    assert emu.stats(per_custom_id=False)["batches_created"] == 0


@pytest.mark.parametrize(
    ("custom_id", "expected"),
    [
        ("a b", "requests.3.custom_id: String should match pattern"),
        ("x" * 65, "requests.3.custom_id: String should have at most 64 characters"),
        ("", "requests.3.custom_id: String should match pattern"),
        ("caf\u00e9", "requests.3.custom_id: String should match pattern"),
    ],
)
def test_bad_custom_id_names_its_index_and_value(
    emulator_factory, client, make_requests, custom_id, expected
) -> None:
    emu = emulator_factory()
    requests = make_requests(5)
    requests[3]["custom_id"] = custom_id

    message = _create_error(client(emu, max_retries=0), requests)["error"]["message"]

    assert message.startswith(expected)
    assert repr(custom_id) in message
    assert emu.stats()["requests_per_custom_id"] == {}


def test_duplicate_custom_id_names_both_indexes(emulator_factory, client, make_requests) -> None:
    requests = make_requests(9)
    requests[7]["custom_id"] = requests[2]["custom_id"]

    message = _create_error(client(emulator_factory(), max_retries=0), requests)["error"]["message"]

    assert "Duplicate custom_id found: req-2" in message
    assert "requests.7" in message and "requests.2" in message


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"params": {}}, "requests.0.custom_id: Field required"),
        ({"custom_id": "a"}, "requests.0.params: Field required"),
        ({"custom_id": "a", "params": []}, "requests.0.params: Input should be a valid dictionary"),
        ({"custom_id": "a", "params": {}, "x": 1}, "requests.0.x: Extra inputs are not permitted"),
    ],
)
def test_malformed_request_elements_are_rejected(
    emulator_factory, client, request_, expected
) -> None:
    body = _create_error(client(emulator_factory(), max_retries=0), [request_])

    assert body["error"]["message"] == expected


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b'{"requests": [', b'{"requests": {}}', b'{"requests": [], "x": 1}', b"\xff"],
)
def test_malformed_bodies_are_400(emulator_factory, payload) -> None:
    emu = emulator_factory()

    response = httpx2.post(f"{emu.base_url}/v1/messages/batches", content=payload, headers=AUTH)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_chunked_bodies_are_accepted(emulator_factory, make_requests) -> None:
    emu = emulator_factory()
    payload = orjson.dumps({"requests": make_requests(3)})

    def pieces() -> Any:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    response = httpx2.post(f"{emu.base_url}/v1/messages/batches", content=pieces(), headers=AUTH)

    assert response.status_code == 200
    assert response.json()["request_counts"]["processing"] == 3


def test_oversized_body_is_413_without_reading_it(emulator_factory) -> None:
    emu = emulator_factory()
    port = int(emu.base_url.rsplit(":", 1)[1])
    head = (
        "POST /v1/messages/batches HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "x-api-key: test-key\r\nanthropic-version: 2023-06-01\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 256000001\r\n\r\n"
    )

    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head.encode() + b'{"requests": [')
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    body = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "request_too_large"
    assert emu.stats()["create_calls"] == 0


def test_oversized_chunked_body_is_413(emulator_factory) -> None:
    emu = emulator_factory()
    megabyte = b" " * (1 << 20)

    def endless() -> Any:
        yield b'{"requests": ['
        for _ in range(300):
            yield megabyte

    response = httpx2.post(
        f"{emu.base_url}/v1/messages/batches", content=endless(), headers=AUTH, timeout=60
    )

    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def _params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
    }
    params.update(overrides)
    return {key: value for key, value in params.items() if value is not None}


@pytest.mark.parametrize(
    ("params", "error_type", "message_part"),
    [
        (_params(model=None), "invalid_request_error", "model: Field required"),
        (_params(max_tokens=None), "invalid_request_error", "max_tokens: Field required"),
        (_params(max_tokens=0), "invalid_request_error", "max_tokens: must be greater"),
        (_params(max_tokens=10**7), "invalid_request_error", "max_tokens: 10000000 > 64000"),
        (_params(messages=None), "invalid_request_error", "messages: Field required"),
        (_params(messages=[]), "invalid_request_error", "messages: at least one message"),
        (
            _params(messages=[{"role": "user", "content": ""}]),
            "invalid_request_error",
            "messages.0.content",
        ),
        (_params(stream=True), "invalid_request_error", "stream=True"),
        (_params(temperatur=0.5), "invalid_request_error", "temperatur: Extra inputs"),
        (
            _params(messages=[{"role": "user", "content": "x" * 800_004}]),
            "invalid_request_error",
            "prompt is too long: 200001 tokens > 200000 maximum",
        ),
        (_params(model="gpt-4o"), "not_found_error", "model: gpt-4o"),
    ],
)
def test_invalid_params_come_back_errored_not_rejected(
    emulator_factory, client, wait_ended, params, error_type, message_part
) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    good = {"custom_id": "good", "params": _params()}

    batch = batches.create(requests=[{"custom_id": "bad", "params": params}, good])
    ended = wait_ended(batches, batch.id)

    assert (ended.request_counts.errored, ended.request_counts.succeeded) == (1, 1)
    results = {result.custom_id: result.result for result in batches.results(batch.id)}
    assert results["good"].type == "succeeded"
    bad = results["bad"]
    assert bad.type == "errored"
    assert bad.error.type == "error"
    assert bad.error.error.type == error_type
    assert message_part in bad.error.error.message
