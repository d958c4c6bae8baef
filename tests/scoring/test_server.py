"""The local Perspective-compatible server's wire format, errors and log."""

from __future__ import annotations

import pytest
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
    # 0.01 QPS: the second request is over the limit however slowly a loaded box sends it.
    server = start_server(faults=FaultConfig(rate_limit_qps=0.01, retry_after_s=2))
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


def test_port_in_use_is_one_line_exit_2(start_server: StartServer, capsys) -> None:  # type: ignore[no-untyped-def]
    from megatron_detox import cli

    server = start_server()
    code = cli.main(["perspective-server", "--port", str(server.port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"127.0.0.1:{server.port}: cannot bind" in err[0] and "--port" in err[0]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--max-text-bytes", "0"], "--max-text-bytes must be >= 1"),
        (["--delay", "-1"], "delay_s must be >= 0"),
        (["--burst-429", "0"], "burst_429 must be >= 1"),
    ],
)
def test_bad_server_options_are_one_line_exit_2(capsys, option: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    from megatron_detox import cli

    code = cli.main(["perspective-server", *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_calibrated_backend_serves_distinct_attributes(tmp_path) -> None:
    from megatron_detox.scoring.calibrated.scorer import CalibratedScorer
    from megatron_detox.scoring.server import ServerSettings, serve_in_thread

    attributes = ["toxicity", "severe_toxicity", "threat", "insult", "profanity", "identity_attack"]
    text = "I will kill you, you stupid piece of shit"
    with serve_in_thread(CalibratedScorer(), settings=ServerSettings(missing_attributes="reject")) as server:
        answer = requests.post(server.url, json=protocol.build_request(text, attributes, ["en"]), timeout=10)
    assert answer.status_code == 200
    values = {name.lower(): score["summaryScore"]["value"] for name, score in answer.json()["attributeScores"].items()}
    assert set(values) == set(attributes)
    assert len(set(values.values())) == len(attributes)  # real per-attribute scores, not one copied
    direct = CalibratedScorer().score([text])[0]
    assert direct is not None and values == {name: direct[name] for name in attributes}
