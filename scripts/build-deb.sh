#!/usr/bin/env bash
# Builds the Debian package `drover` (see [package.metadata.deb] in
# cli/Cargo.toml): release builds of drover, drover-master and drover-agent,
# then cargo-deb packs them with the systemd units, config, example jobs and
# dashboards. Prints the .deb's path on stdout, and nothing else there, so:
#
#   export DROVER_DEB="$(scripts/build-deb.sh)"   # then packaging/tests/deb.rs checks it
#
# Arguments go to cargo deb: `--fast` (lighter compression: ~10 s instead of
# ~1 min here, a ~20% larger file) suits a package built only to be tested.
#
# Honours CARGO_TARGET_DIR (cargo-deb maps its target/release/ asset paths
# onto the real target dir). Needs cargo-deb and dpkg-dev (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb is missing: run scripts/setup.sh" >&2
    exit 1
fi

# Progress goes to stderr; only the package's path goes to stdout.
cargo build --release --locked --bins -p drover -p drover-master -p drover-agent >&2
# --no-build: the binaries above are what gets packed. cargo-deb prints the
# path of the .deb it wrote as its last line on stdout.
deb="$(cargo deb --package drover --no-build --locked "$@" | tail -n 1)"
if [ ! -f "$deb" ]; then
    echo "cargo deb did not report a .deb (got: $deb)" >&2
    exit 1
fi
echo "==> built $deb" >&2
echo "$deb"
