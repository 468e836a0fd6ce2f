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
# <repo>/target/js-tools/node_modules. Override the location with SLUICE_JS_TOOLS.
# Set SLUICE_JS_BACKEND=qjs for the QuickJS backend (about 1.7 MB instead of 12 MB).
set -euo pipefail

JCO_VERSION="1.35.0"
COMPONENTIZE_JS_VERSION="0.23.0"

die() { echo "sdk/js/build.sh: error: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 <plugin-dir> <out-dir>"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../package.sh
source "$here/../package.sh"
repo="$(cd "$here/../.." && pwd)"
plugin="$(cd "$1" 2>/dev/null && pwd)" || die "plugin directory '$1' does not exist"
mkdir -p "$2"
out="$(cd "$2" && pwd)"
tools="${SLUICE_JS_TOOLS:-$repo/target/js-tools}"
backend="${SLUICE_JS_BACKEND:-starlingmonkey}"

[[ -f "$plugin/app.js" ]] || die "$plugin/app.js is missing"
component="$(plugin_component "$plugin")"

# --- toolchain -------------------------------------------------------------
command -v node >/dev/null || die "node not found; install Node.js 20+ to build JS plugins"
command -v npm >/dev/null || die "npm not found; install npm to build JS plugins"
installed() { node -p "require('$tools/node_modules/$1/package.json').version" 2>/dev/null || true; }
if [[ "$(installed @bytecodealliance/jco)" != "$JCO_VERSION" \
   || "$(installed @bytecodealliance/componentize-js)" != "$COMPONENTIZE_JS_VERSION" ]]; then
  echo "installing @bytecodealliance/jco@$JCO_VERSION and @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION into $tools" >&2
  mkdir -p "$tools"
  [[ -f "$tools/package.json" ]] || echo '{"name":"sluice-js-tools","private":true}' > "$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --save-exact \
      "@bytecodealliance/jco@$JCO_VERSION" \
      "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" >&2) \
    || die "could not install jco/componentize-js from npm (is the npm registry reachable?)"
  [[ "$(installed @bytecodealliance/jco)" == "$JCO_VERSION" ]] || die "jco $JCO_VERSION did not install in $tools"
fi
jco="$tools/node_modules/@bytecodealliance/jco/dist/jco.js"
[[ -f "$jco" ]] || die "$jco is missing; delete $tools and retry"

# --- WIT: sluice:action (unchanged) + wasi:filesystem, world action-js -----
witdir="$(mktemp -d "${TMPDIR:-/tmp}/sluice-js-wit.XXXXXX")"
trap 'rm -rf "$witdir"' EXIT
cp "$here/wit/action-js.wit" "$witdir/"
mkdir -p "$witdir/deps/sluice-action"
cp "$here"/wit/deps/*.wit "$witdir/deps/"
cp "$repo"/wit/*.wit "$witdir/deps/sluice-action/"

# --- build -----------------------------------------------------------------
# StarlingMonkey: `-d http fetch-event` drops the wasi:http import and handler.
# QuickJS takes no --disable and imports no wasi:http anyway; its default output
# uses component-model async intrinsics, which --backend-qjs-disable-async avoids.
case "$backend" in
  starlingmonkey|sm) features=(-d http fetch-event) ;;
  quickjs|qjs) features=(--backend-qjs-disable-async) ;;
  *) die "SLUICE_JS_BACKEND must be starlingmonkey or qjs, not '$backend'" ;;
esac
echo "node --import $here/preopen.mjs $jco componentize $plugin/app.js --wit $witdir -n action-js ${features[*]} --backend $backend -o $out/$component" >&2
start=$(date +%s)
(cd "$plugin" && SLUICE_JS_TOOLS="$tools" node --import "$here/preopen.mjs" "$jco" componentize "$plugin/app.js" \
   --wit "$witdir" -n action-js "${features[@]}" --backend "$backend" -o "$out/$component")
end=$(date +%s)
[[ -s "$out/$component" ]] || die "jco produced no component"

digest="$(write_pinned_manifest "$plugin" "$out" "$component")"

size=$(stat -c %s "$out/$component")
echo "built $out/$component ($size bytes, sha256 $digest) in $((end - start)) s" >&2
