#!/usr/bin/env bash
# Builds every example processor, Rust and Go, from source into OUT_DIR
# (default: the modules shipped in the Python package). Builds are reproducible: paths of
# this checkout and of cargo's home are remapped, so another clone on another
# machine makes the same bytes (.ci/run checks the shipped modules that way).
#
#   guests/build.sh [OUT_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$repo/host/wasmgate/modules}")
mkdir -p "$out"
cargo_home=${CARGO_HOME:-$HOME/.cargo}

build_rust() {
    # Cargo's crate hashes depend on where the sources are, and they order the
    # functions in a module: the sources are built from one fixed place, so
    # every clone on every machine makes the same bytes.
    local root=/tmp/wasmgate-guests-build
    mkdir -p "$root"
    exec 9>"$root/lock"
    flock 9 # one build at a time in the fixed place
    rm -rf "$root/src"
    mkdir -p "$root/src/guests" "$root/src/sdk"
    cp -r "$repo/wit" "$root/src/wit"
    cp -r "$repo/sdk/rust" "$root/src/sdk/rust"
    cp -r "$repo/guests/rust" "$root/src/guests/rust"
    rm -rf "$root/src/sdk/rust/target" "$root/src/guests/rust/target"
    # Debian's rustc has the wasm32 standard library's sources (rust-web-src);
    # -Zbuild-std builds it, once per target dir.
    export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    export __CARGO_TESTS_ONLY_SRC_ROOT=/usr/lib/rustlib/src/rust/library
    export CARGO_TARGET_DIR="$root/target"
    # A 128 KiB stack (Rust's default is 1 MiB) keeps a fresh instance's memory
    # small: the gateway starts one per request.
    export RUSTFLAGS="-C linker=/usr/bin/wasm-ld-14 -C link-arg=-zstack-size=131072 \
        --remap-path-prefix=$root/src=/wasmgate --remap-path-prefix=$cargo_home=/cargo"
    /usr/bin/cargo build --quiet --locked --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort \
        --manifest-path "$root/src/guests/rust/Cargo.toml"
    for crate in "$repo"/guests/rust/*/Cargo.toml; do
        grep -q cdylib "$crate" || continue # a library the guests share
        name=$(basename "$(dirname "$crate")")
        cp "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/${name//-/_}.wasm" "$out/$name.wasm"
    done
    flock -u 9
}

build_go() {
    # wasip1 reactors with //go:wasmexport (Go 1.24 or newer); paths, build
    # ids and version-control stamps left out so any clone makes the same bytes.
    for module in "$repo"/guests/go/*/go.mod; do
        dir=$(dirname "$module")
        (cd "$dir" && GOOS=wasip1 GOARCH=wasm GOTOOLCHAIN=local GOFLAGS=-mod=mod \
            go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags=-buildid= -o "$out/$(basename "$dir").wasm" .)
    done
}

build_rust
build_go
ls -l "$out"/*.wasm | awk '{printf "  %8d  %s\n", $5, $NF}'
