#!/usr/bin/env bash
# Build a JavaScript Sluice plugin into a Wasm component plus its plugin.toml.
#
#   sdk/js/build.sh <plugin-dir> <out-dir>
#
# <plugin-dir> holds app.js (an ES module exporting `run`) and plugin.toml.
# <out-dir> receives the component named by plugin.toml's `component` and a
# plugin.toml with its sha256, ready for `sluice plugin install <out-dir> --yes`.
#
# The toolchain (jco + componentize-js, from npm) is installed on first use into
# the user's toolchain cache (see ../toolchain.sh: $SLUICE_TOOLCHAINS, default
# ${XDG_CACHE_HOME:-~/.cache}/sluice/toolchains), never into the Sluice checkout.
# The helper module (lib/sluice.js) is importable as `./sluice.js`.
# Set SLUICE_JS_BACKEND=qjs for the QuickJS backend (about 1.7 MB instead of 12 MB).
set -euo pipefail

die() { echo "sdk/js/build.sh: error: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 <plugin-dir> <out-dir>"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../package.sh
source "$here/../package.sh"
# shellcheck source=../toolchain.sh
source "$here/../toolchain.sh"
# shellcheck source=tools.sh
source "$here/tools.sh"
# The WIT is the repository's wit/ (or the copy a scaffold vendors at the same
# relative place: vendor/sluice/{sdk,wit}).
wit="$(cd "$here/../../wit" 2>/dev/null && pwd)" || die "$here/../../wit is missing"
plugin="$(cd "$1" 2>/dev/null && pwd)" || die "plugin directory '$1' does not exist"
mkdir -p "$2"
out="$(cd "$2" && pwd)"
backend="${SLUICE_JS_BACKEND:-starlingmonkey}"

[[ -f "$plugin/app.js" ]] || die "$plugin/app.js is missing"
component="$(plugin_component "$plugin")"

# --- toolchain -------------------------------------------------------------
tools="$(ensure_js_tools)"
jco="$tools/node_modules/@bytecodealliance/jco/dist/jco.js"
[[ -f "$jco" ]] || die "$jco is missing; delete $tools and retry"

# --- WIT: sluice:action (unchanged) + wasi:filesystem, world action-js -----
scratch="$(mktemp -d "${TMPDIR:-/tmp}/sluice-js-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
witdir="$scratch/wit"
mkdir -p "$witdir/deps/sluice-action"
cp "$here/wit/action-js.wit" "$witdir/"
cp "$here"/wit/deps/*.wit "$witdir/deps/"
cp "$wit"/*.wit "$witdir/deps/sluice-action/"

# --- sources: the plugin's files plus the helper module ----------------------
# componentize-js resolves relative imports only below app.js's directory, so
# the plugin is staged with lib/sluice.js next to app.js (`import ... from
# './sluice.js'`). Build output and vendored files stay out.
[[ -e "$plugin/sluice.js" ]] && die "$plugin/sluice.js would shadow the SDK's helper module; rename it"
src="$scratch/src"
mkdir -p "$src"
tar -C "$plugin" --exclude=./dist --exclude=./vendor --exclude=./node_modules --exclude=./.git -cf - . \
  | tar -C "$src" -xf -
cp "$here/lib/sluice.js" "$src/sluice.js"

# --- build -----------------------------------------------------------------
# StarlingMonkey (the default) builds with componentize-js's own CLI: given the
# source path, it resolves app.js's relative imports (./sluice.js), which jco's
# wrapper does not. `-d http fetch-event` keeps wasi:http out of the component.
# QuickJS goes through jco and takes no --disable (it imports no wasi:http);
# its default output uses component-model async intrinsics, which
# --backend-qjs-disable-async avoids.
cjs="$tools/node_modules/@bytecodealliance/componentize-js/src/cli.js"
case "$backend" in
  starlingmonkey|sm) cmd=("$cjs" "$src/app.js" --wit "$witdir" -n action-js -d http fetch-event -o "$out/$component") ;;
  quickjs|qjs) cmd=("$jco" componentize "$src/app.js" --wit "$witdir" -n action-js --backend-qjs-disable-async --backend qjs -o "$out/$component") ;;
  *) die "SLUICE_JS_BACKEND must be starlingmonkey or qjs, not '$backend'" ;;
esac
echo "node --import $here/preopen.mjs ${cmd[*]}" >&2
start=$(date +%s)
(cd "$src" && SLUICE_JS_TOOLS="$tools" node --import "$here/preopen.mjs" "${cmd[@]}")
end=$(date +%s)
[[ -s "$out/$component" ]] || die "jco produced no component"

digest="$(write_pinned_manifest "$plugin" "$out" "$component")"

size=$(stat -c %s "$out/$component")
echo "built $out/$component ($size bytes, sha256 $digest) in $((end - start)) s" >&2
