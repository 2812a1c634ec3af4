#!/usr/bin/env bash
# The whole test suite: what a newcomer runs and what CI runs (.ci/run calls
# this after nothing else). Installs what the tests need when it is missing,
# then: formatting, clippy, every test, doc tests, each benchmark once as a
# smoke test, and schemathesis over the REST API (scripts/schemathesis.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

"$(dirname "$0")/setup.sh" --tests

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "doc tests"
cargo test --workspace --doc --locked

step "benchmarks, once each (smoke: correctness only, no timing)"
cargo test -p scheduler-policies --bench placement --locked
cargo test -p drover-master --bench submit --locked

step "build every binary (the e2e and CLI tests run the real ones)"
cargo build --workspace --bins --locked

step "the REST API against its OpenAPI document (schemathesis on drover dev)"
./scripts/schemathesis.sh

step "release build + Debian package (checked by packaging/tests/deb.rs)"
DROVER_DEB="$(./scripts/build-deb.sh --fast)"
export DROVER_DEB

step "tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain closing line, whatever the runner printed: "N passed, N failed".
summary=$(grep -E '^ +Summary .* tests? run' "$log" | tail -n 1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
