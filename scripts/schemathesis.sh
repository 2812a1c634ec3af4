#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document: a real `drover dev` on
# an ephemeral port, the document validated by openapi-spec-validator, then
# schemathesis over every route with a fixed seed and a bounded number of
# examples. Checks: no 5xx; every status, content type, header and body as
# documented; requests that violate the document are refused with a 4xx.
# The `examples` phase is left out: the document's few `examples` are
# covered by the others, and schemathesis 4.32's extraction of them from
# nested schemas can crash inside Hypothesis ("Inconsistent results").
# One worker: Hypothesis' lambda-source cache is not thread-safe on Python
# 3.11, and two workers crash it now and then ("AST constructor recursion
# depth mismatch").
#
#   scripts/schemathesis.sh [path/to/drover]
#
# Needs the venv that `scripts/setup.sh --tests` makes ($DROVER_PY_VENV,
# default ~/.cache/drover/py) and a built `drover` binary.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DROVER_PY_VENV:-$HOME/.cache/drover/py}"
drover="${1:-${CARGO_TARGET_DIR:-target}/debug/drover}"
examples="${SCHEMATHESIS_EXAMPLES:-50}"
seed="${SCHEMATHESIS_SEED:-20261206}"

for tool in schemathesis openapi-spec-validator; do
    [ -x "$venv/bin/$tool" ] || { echo "$venv/bin/$tool is missing: run scripts/setup.sh --tests" >&2; exit 1; }
done
[ -x "$drover" ] || { echo "$drover is missing: run cargo build --bins" >&2; exit 1; }

work="$(mktemp -d)"
dev_pid=""
cleanup() {
    if [ -n "$dev_pid" ]; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG=warn "$drover" dev --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
addr=""
for _ in $(seq 1 300); do
    addr="$(sed -n 's/^export DROVER_ADDR=//p' "$work/dev.out")"
    [ -n "$addr" ] && break
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.err" >&2; echo "drover dev exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "drover dev did not become ready" >&2; exit 1; }
echo "drover dev at $addr"

# A job whose task has run, for the hooks' known path parameters.
cat >"$work/known.yaml" <<'YAML'
name: st-known
command: ["/bin/echo", "known"]
YAML
DROVER_ADDR="$addr" "$drover" job run --wait "$work/known.yaml" >/dev/null

"$venv/bin/python" - "$addr" "$work/served.json" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/v1/openapi.json") as r:
    open(sys.argv[2], "wb").write(r.read())
PY
cmp -s "$work/served.json" api/openapi.json \
    || { echo "the served document differs from api/openapi.json: regenerate it with 'drover api openapi > api/openapi.json'" >&2; exit 1; }
"$venv/bin/openapi-spec-validator" "$work/served.json"

cd "$work"
PYTHONPATH="$OLDPWD/scripts/schemathesis" SCHEMATHESIS_HOOKS=hooks \
    "$venv/bin/schemathesis" run "http://$addr/v1/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
    --phases coverage,fuzzing,stateful \
    --max-examples "$examples" --seed "$seed" --workers 1 \
    --request-timeout 30 --no-color
