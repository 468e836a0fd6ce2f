#!/usr/bin/env bash
# Run a built plugin component once, without the Sluice host: transpile it with
# jco to JS and call `run` under Node with stand-in sluice:action imports
# (host.js) and the given preopens.
#
#   sdk/harness/try.sh <component.wasm> '<invocation json>' [/guest/path=/host/dir ...]
#
# Invocation fields are camelCase and default to empty, e.g.
#   '{"config":[["who","me"]],"inputs":["src"],"outputs":["notes"],"executionId":"e1"}'
# Stand-ins: log and progress print `[log <level>] ...` and `[progress N%] ...`;
# secrets come from SLUICE_TRY_SECRET_<NAME> variables; process refuses every
# command; continuation prints `[continuation] resume in <ms> ms with token <t>`;
# files.copy-tree copies between the mapped host directories.
# Prints `OK <outcome json>` or `ERR <failure json>`, and exits 0 for OK, 1 for
# ERR, 2 for a trap or a harness error. A smoke test only: the real sandbox,
# limits and grants are the host's (`sluice run`).
#
# Needs Node.js 20+; jco comes from the JS toolchain cache (installed from npm on
# first use, see ../toolchain.sh).
set -euo pipefail
die() { echo "sdk/harness/try.sh: error: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: $0 <component.wasm> '<invocation json>' [/guest=/host ...]"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../toolchain.sh
source "$here/../toolchain.sh"
# shellcheck source=../js/tools.sh
source "$here/../js/tools.sh"
[[ -f "$1" ]] || die "$1 does not exist"
wasm="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
name="$(basename "$wasm" .wasm)"
tools="$(ensure_js_tools)"
jco="$tools/node_modules/@bytecodealliance/jco/dist/jco.js"
[[ -f "$jco" ]] || die "$jco is missing; delete $tools and retry"

# The harness runs inside the toolchain directory so that Node finds
# @bytecodealliance/preview2-shim in its node_modules; one directory per run.
work="$(mktemp -d "$tools/harness.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$here/host.js" "$here/run.mjs" "$work/"
echo '{"type":"module"}' > "$work/package.json"

# Map every sluice:action interface the component imports to its stand-in in
# host.js. An interface host.js does not know gets a stub whose every function
# fails naming it, and a warning, so the component still loads.
imports="$(node "$jco" wit "$wasm" 2>/dev/null | sed -n 's/^[[:space:]]*import sluice:action\/\([a-z-]*\)@\([0-9.]*\);.*/\1@\2/p' | sort -u)" \
  || die "jco cannot read $wasm; is it a component?"
known=" log secrets process continuation files types "
maps=()
: > "$work/stubs.js"
for i in $imports; do
  iface="${i%@*}"
  if [[ "$known" == *" $iface "* ]]; then
    maps+=(--map "sluice:action/$i=../host.js#$iface")
  else
    echo "sdk/harness/try.sh: warning: no stand-in for sluice:action/$i; calling it fails" >&2
    export_name="$(echo "$iface" | sed -E 's/-([a-z])/\U\1/g')"
    echo "export const $export_name = new Proxy({}, { get: (_, f) => () => { throw new Error(\`try.sh has no stand-in for sluice:action/$i \${String(f)}\`); } });" >> "$work/stubs.js"
    maps+=(--map "sluice:action/$i=../stubs.js#$export_name")
  fi
done
(cd "$work" && node "$jco" transpile "$wasm" -o "$name" "${maps[@]}" >/dev/null) || die "jco transpile failed"
shift
# componentize-py output uses extended-const, which Node 20 only has behind a flag.
cd "$work" && node --experimental-wasm-extended-const run.mjs "$name/$name.js" "$@"
