#!/usr/bin/env bash
# Installs what building and testing Drover needs on a Debian machine with
# Rust, skipping whatever is already there. Safe to run again.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)  # etcd-client's build
# etcd-client's build imports protobuf's well-known types (descriptor.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
# The etcd store tests run a real etcd server (/usr/bin/etcd).
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
command -v cc >/dev/null || need_apt+=(build-essential)
# The monitoring tests: promtool, and a real Prometheus scraping drover dev.
command -v promtool >/dev/null || need_apt+=(prometheus)
# The packaging tests: systemd-analyze and systemd-sysusers on the units,
# dpkg-shlibdeps for the .deb's Depends.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)

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
if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> installing cargo-deb"
    cargo install cargo-deb --version 3.8.0 --locked
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
