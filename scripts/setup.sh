#!/usr/bin/env bash
# Installs what building and testing Drover needs on a Debian machine with
# Rust, skipping whatever is already there. Safe to run again.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)  # etcd-client's build
command -v cc >/dev/null || need_apt+=(build-essential)
# The monitoring tests: promtool, and a real Prometheus scraping drover dev.
command -v promtool >/dev/null || need_apt+=(prometheus)

if ((${#need_apt[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
