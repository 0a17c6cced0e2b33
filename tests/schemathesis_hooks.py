"""Schemathesis hooks for tests/schemathesis.toml: the one rule of the document that JSON Schema
cannot state (PaddleX's `minPixels` ≤ `maxPixels` on /layout-parsing: 422 otherwise)."""

from __future__ import annotations

import schemathesis


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    body = case.body
    if case.operation.path != "/layout-parsing" or not isinstance(body, dict):
        return True
    low, high = body.get("minPixels"), body.get("maxPixels")
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
    return not (numbers and low > high)
