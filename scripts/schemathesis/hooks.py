"""Schemathesis hooks for the API fuzz run (scripts/schemathesis.sh).

Two adjustments, neither of which can turn an invalid request valid:

- `count` and `shards` in the valid range are capped at 20. The document
  allows a million tasks per job, and the fuzzer reaches for the bounds; a
  2-core CI machine running a debug `drover dev` would spend the run
  storing and starting millions of tasks. Values outside the range are left
  alone, so negative cases stay negative. The bounds themselves are tested
  in Rust (api/src/spec.rs).
- Every other path parameter names the job, task and alloc that the script
  submitted first, so that the 200 answers of the task, alloc and log routes
  are reached and checked against the document, not only their 404s.
"""

import zlib

import schemathesis

MAX_TASKS = 1_000_000
CAP = 20

# What scripts/schemathesis.sh submits and waits for.
KNOWN = {"job": "st-known", "id": "st-known", "index": "0", "attempt": "1"}


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        for key in ("count", "shards"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and CAP < value <= MAX_TASKS:
                body[key] = CAP
    return body


@schemathesis.hook
def map_path_parameters(ctx, params):
    if not params:
        return params
    # Deterministic for a given draw: half of the cases name the known ones.
    seed = zlib.crc32(repr(sorted(params.items())).encode())
    if seed % 2 == 0:
        path = ctx.operation.path
        for name in params:
            if name == "id" and path.startswith("/v1/nodes"):
                params[name] = "dev-1"
            elif name in KNOWN:
                params[name] = KNOWN[name]
    return params
