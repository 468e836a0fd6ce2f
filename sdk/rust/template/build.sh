#!/usr/bin/env bash
# Build this plugin and package it into dist/{{name}}/ with its sha256 pinned;
# then: sluice plugin install dist/{{name}}
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --target wasm32-wasip2 --release
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p dist/{{name}}
cp "$target_dir/wasm32-wasip2/release/{{crate_file}}.wasm" dist/{{name}}/{{name}}.wasm
digest=$(sha256sum dist/{{name}}/{{name}}.wasm | cut -d' ' -f1)
sed "s/^component = .*/&\nsha256 = \"$digest\"/" plugin.toml > dist/{{name}}/plugin.toml
echo "packaged dist/{{name}} (sha256 $digest)"
