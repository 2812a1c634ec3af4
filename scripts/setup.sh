#!/usr/bin/env bash
# Installs what building Drover needs on a Debian machine with Rust, and with
# --tests also what its test suite needs (scripts/test.sh passes it),
# skipping whatever is already there. Safe to run again.
#
#   scripts/setup.sh           build: protoc and protobuf's .proto files, a C compiler
#   scripts/setup.sh --tests   + etcd, Prometheus, systemd tools, dpkg-dev,
#                                cargo-nextest, cargo-deb, rustfmt, clippy,
#                                and a Python venv with schemathesis and
#                                openapi-spec-validator (scripts/schemathesis.sh)
set -euo pipefail

tests=false
case "${1:-}" in
    "") ;;
    --tests) tests=true ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)  # etcd-client's build
# etcd-client's build imports protobuf's well-known types (descriptor.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v cc >/dev/null || need_apt+=(build-essential)
if $tests; then
    # The etcd store and HA tests run a real etcd server (/usr/bin/etcd).
    [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
    # The monitoring tests: promtool, and a real Prometheus scraping drover dev.
    command -v promtool >/dev/null || need_apt+=(prometheus)
    # The packaging tests: systemd-analyze and systemd-sysusers on the units,
    # dpkg-shlibdeps for the .deb's Depends.
    command -v systemd-analyze >/dev/null || need_apt+=(systemd)
    command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
    # The fault tests: a master whose wall clock jumps (libfaketime), and
    # an agent cut off in a network namespace (ip, from iproute2).
    dpkg -s libfaketime >/dev/null 2>&1 || need_apt+=(libfaketime)
    command -v ip >/dev/null || need_apt+=(iproute2)
    # The API fuzz run: a venv for schemathesis (Debian splits venv out).
    command -v python3 >/dev/null || need_apt+=(python3)
    # Debian's python3 imports ensurepip but cannot bootstrap pip without
    # python3-venv: ask dpkg, not Python.
    if command -v dpkg >/dev/null; then
        dpkg -s python3-venv >/dev/null 2>&1 || need_apt+=(python3-venv)
    else
        python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
    fi
fi

if ((${#need_apt[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

$tests || exit 0

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> installing cargo-deb"
    cargo install cargo-deb --version 3.8.0 --locked
fi
# Pinned, dependencies included, so that no release can change what the
# fuzz run checks; reinstalled whenever the pins change.
venv="${DROVER_PY_VENV:-$HOME/.cache/drover/py}"
pins="$(dirname "$0")/schemathesis/requirements.txt"
if ! cmp -s "$pins" "$venv/.drover-pins"; then
    echo "==> installing schemathesis and openapi-spec-validator ($pins) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins"
    cp "$pins" "$venv/.drover-pins"
fi

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
