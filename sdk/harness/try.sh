#!/usr/bin/env bash
# Run a built plugin component once, without the Sluice host: transpile it with
# jco to JS and call `run` under Node with stand-in sluice:action imports
# (host.js: log prints, secrets and process refuse) and the given preopens.
#
#   sdk/harness/try.sh <component.wasm> '<invocation json>' [/guest/path=/host/dir ...]
#
# Invocation fields are camelCase and default to empty, e.g.
#   '{"config":[["who","me"]],"inputs":["src"],"outputs":["notes"],"executionId":"e1"}'
# Prints `OK <outcome json>` or `ERR <failure json>`. A smoke test only: the
# real sandbox, limits and grants are the host's (`sluice run`).
set -euo pipefail
die() { echo "sdk/harness/try.sh: error: $*" >&2; exit 1; }
[[ $# -ge 2 ]] || die "usage: $0 <component.wasm> '<invocation json>' [/guest=/host ...]"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${SLUICE_JS_TOOLS:-$repo/target/js-tools}"
jco="$tools/node_modules/@bytecodealliance/jco/dist/jco.js"
[[ -f "$jco" ]] || die "jco is not installed in $tools; run sdk/js/build.sh once first"
wasm="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[[ -f "$wasm" ]] || die "$1 does not exist"
name="$(basename "$wasm" .wasm)"
work="$tools/harness"
mkdir -p "$work"
cp "$here/host.js" "$here/run.mjs" "$work/"
echo '{"type":"module"}' > "$work/package.json"
maps=()
for i in log secrets process types; do maps+=(--map "sluice:action/$i@0.1.0=../host.js#$i"); done
(cd "$work" && node "$jco" transpile "$wasm" -o "$name" "${maps[@]}" >/dev/null) || die "jco transpile failed"
shift
# componentize-py output uses extended-const, which Node 20 only has behind a flag.
cd "$work" && exec node --experimental-wasm-extended-const run.mjs "$name/$name.js" "$@"
