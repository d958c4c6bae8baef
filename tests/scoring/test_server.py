"""The local Perspective-compatible server's wire format, errors and log."""

from __future__ import annotations

import requests

from megatron_detox.scoring import protocol
from megatron_detox.scoring.faults import FaultConfig
from megatron_detox.scoring.server import read_request_log

from .conftest import StartServer


def test_response_shape(start_server: StartServer) -> None:
    server = start_server()
    body = protocol.build_request("what a nice day", ["toxicity", "threat"], ["en"])
    answer = requests.post(server.url, json=body, timeout=5)
    assert answer.status_code == 200
    data = answer.json()
    assert data["languages"] == ["en"] and set(data["attributeScores"]) == {"TOXICITY", "THREAT"}
    summary = data["attributeScores"]["TOXICITY"]["summaryScore"]
    assert summary["type"] == "PROBABILITY" and 0 <= summary["value"] <= 1
    assert data["attributeScores"]["TOXICITY"]["spanScores"][0]["end"] == len("what a nice day")
    entry = read_request_log(server.log_path)[0]  # type: ignore[attr-defined]
    assert entry["status"] == 200 and entry["text_bytes"] == 15 and "text" not in entry


def test_google_error_shapes(start_server: StartServer) -> None:
    server = start_server(missing_attributes="reject")
    cases = [
        (server.url, {"comment": {"text": ""}, "requestedAttributes": {"TOXICITY": {}}}, 400, "non-empty"),
        (server.url, {"comment": {"text": "hi"}, "requestedAttributes": {"THREAT": {}}}, 400, "THREAT"),
        (server.url, {"nonsense": 1}, 400, "Invalid JSON"),
        (server.url.replace("comments:analyze", "nothing"), {}, 404, "No such method"),
    ]
    for url, body, code, text in cases:
        answer = requests.post(url, json=body, timeout=5)
        error = answer.json()["error"]
        assert answer.status_code == code == error["code"] and text in error["message"]
        assert error["status"] == protocol.build_error(code, "")["error"]["status"]


def test_rate_limit_sends_429_with_retry_after(start_server: StartServer) -> None:
    server = start_server(faults=FaultConfig(rate_limit_qps=1, retry_after_s=2))
    body = protocol.build_request("hello", ["toxicity"], ["en"])
    with requests.Session() as session:
        first = session.post(server.url, json=body, timeout=5)
        second = session.post(server.url, json=body, timeout=5)
    assert first.status_code == 200 and second.status_code == 429
    assert second.headers["Retry-After"] == "2" and second.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_malformed_body_fault(start_server: StartServer) -> None:
    server = start_server(faults=FaultConfig(p_malformed=1.0))
    answer = requests.post(server.url, json=protocol.build_request("x y", ["toxicity"], []), timeout=5)
    assert answer.status_code == 200
    try:
        protocol.parse_response(answer.content, ["toxicity"])
    except protocol.MalformedResponse as error:
        assert "malformed" in str(error)
    else:
        raise AssertionError("a malformed body parsed")
