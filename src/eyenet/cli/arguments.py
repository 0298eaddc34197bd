"""Argument types of the ``eyenet`` command line: each rejects a bad value with a message naming it."""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

from eyenet.core.errors import InvalidParameterError


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError("expected a number, got NaN")
    return v


def name_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def parse_params(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"--params: not valid JSON ({exc.msg}, character {exc.pos}): {text!r}") from None
    if not isinstance(params, dict):
        raise InvalidParameterError(
            f"--params: expected a JSON object such as '{{\"window\": 32}}', got {type(params).__name__}"
        )
    return params
