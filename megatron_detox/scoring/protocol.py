"""Perspective API wire format, shared by the client and the local server.

Request (``POST .../v1alpha1/comments:analyze``)::

    {"comment": {"text": "..."}, "requestedAttributes": {"TOXICITY": {}, ...},
     "languages": ["en"], "doNotStore": true}

Response::

    {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 0.1, "type": "PROBABILITY"},
                                      "spanScores": [...]}}, "languages": ["en"]}

Errors use Google's shape ``{"error": {"code": 400, "message": "...", "status": "..."}}``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

API_PATH = "/v1alpha1/comments:analyze"
DEFAULT_URL = "https://commentanalyzer.googleapis.com" + API_PATH
API_VERSION = "v1alpha1"
# The paper's code truncates to 20 KiB; today's documentation states 3000 bytes.
DEFAULT_MAX_BYTES = 20480
DOCUMENTED_MAX_BYTES = 3000
TOO_LONG_MESSAGE = "Comment text too long."
_TOO_LONG = re.compile(r"(?i)too long|too many bytes")
_BAD_KEY = re.compile(r"(?i)api key not valid|api_key_invalid|permission.denied|unauthenticated")


class MalformedResponse(ValueError):
    """The server answered 200 with a body that is not a Perspective response."""


def build_request(text: str, attributes: Sequence[str], languages: Sequence[str]) -> dict[str, Any]:
    """The ``comments:analyze`` body for one text; attributes are lower-case names."""
    body: dict[str, Any] = {
        "comment": {"text": text},
        "requestedAttributes": {attribute.upper(): {} for attribute in attributes},
        "doNotStore": True,
    }
    if languages:  # empty = let Perspective detect the language
        body["languages"] = list(languages)
    return body


def parse_response(payload: bytes, attributes: Sequence[str]) -> dict[str, float]:
    """Lower-case attribute -> summary score; raises ``MalformedResponse``."""
    try:
        data = json.loads(payload)
        attribute_scores = data["attributeScores"]
        scores: dict[str, float] = {}
        for attribute in attributes:
            value = attribute_scores[attribute.upper()]["summaryScore"]["value"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{attribute.upper()} score is {type(value).__name__}")
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{attribute.upper()} score {value!r} is not a probability")
            scores[attribute.lower()] = float(value)
    except (ValueError, KeyError, TypeError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise MalformedResponse(f"malformed Perspective response ({detail[:200]})") from None
    return scores


def parse_error(payload: bytes) -> tuple[str, str]:
    """``(status, message)`` from a Google error body; tolerant of any body."""
    try:
        error = json.loads(payload)["error"]
        return str(error.get("status", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", payload[:200].decode("utf-8", "replace").strip()


def is_too_long(message: str) -> bool:
    return bool(_TOO_LONG.search(message))


def is_bad_key(status: str, message: str) -> bool:
    return bool(_BAD_KEY.search(status) or _BAD_KEY.search(message))


def build_response(scores: Mapping[str, float], text_length: int, languages: Sequence[str]) -> dict[str, Any]:
    """A Perspective response with one span covering the whole text per attribute."""
    return {
        "attributeScores": {
            name.upper(): {
                "summaryScore": {"value": value, "type": "PROBABILITY"},
                "spanScores": [{"begin": 0, "end": text_length, "score": {"value": value, "type": "PROBABILITY"}}],
            }
            for name, value in scores.items()
        },
        "languages": list(languages),
    }


def build_error(code: int, message: str) -> dict[str, Any]:
    """Google's error body; ``status`` is the canonical gRPC name for ``code``."""
    status = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        413: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }.get(code, HTTPStatus(code).phrase.upper().replace(" ", "_"))
    return {"error": {"code": code, "message": message, "status": status}}
