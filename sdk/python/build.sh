#!/usr/bin/env bash
# Build a Python Sluice plugin into a Wasm component plus its plugin.toml.
#
#   sdk/python/build.sh <plugin-dir> <out-dir>
#
# <plugin-dir> holds app.py (class WitWorld subclassing wit_world.WitWorld) and
# plugin.toml. <out-dir> receives the component named by plugin.toml's
# `component` and a plugin.toml with its sha256, ready for
# `sluice plugin install <out-dir> --yes`.
#
# The toolchain (componentize-py, from PyPI) is installed on first use into a
# venv in the user's toolchain cache (see ../toolchain.sh: $SLUICE_TOOLCHAINS,
# default ${XDG_CACHE_HOME:-~/.cache}/sluice/toolchains), never into the Sluice
# checkout. The helper module sluice_sdk (lib/sluice_sdk.py) is on the path.
set -euo pipefail

COMPONENTIZE_PY_VERSION="0.25.1"

die() { echo "sdk/python/build.sh: error: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 <plugin-dir> <out-dir>"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../package.sh
source "$here/../package.sh"
# shellcheck source=../toolchain.sh
source "$here/../toolchain.sh"
# The WIT is the repository's wit/ (or the copy a scaffold vendors at the same
# relative place: vendor/sluice/{sdk,wit}).
wit="$(cd "$here/../../wit" 2>/dev/null && pwd)" || die "$here/../../wit is missing"
plugin="$(cd "$1" 2>/dev/null && pwd)" || die "plugin directory '$1' does not exist"
mkdir -p "$2"
out="$(cd "$2" && pwd)"
venv="$(toolchains_root)/componentize-py-$COMPONENTIZE_PY_VERSION"

[[ -f "$plugin/app.py" ]] || die "$plugin/app.py is missing (the guest module must be named app)"
component="$(plugin_component "$plugin")"

# --- toolchain -------------------------------------------------------------
install_componentize_py() {
  local venv="$1"
  command -v python3 >/dev/null || die "python3 not found; install Python 3.9+ to build Python plugins"
  echo "installing componentize-py==$COMPONENTIZE_PY_VERSION into $venv" >&2
  python3 -m venv "$venv" \
    || die "could not create a venv at $venv (on Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION" \
    || die "could not install componentize-py==$COMPONENTIZE_PY_VERSION from PyPI (is PyPI reachable?)"
  local have
  have="$("$venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')" || true
  [[ "$have" == "$COMPONENTIZE_PY_VERSION" ]] \
    || die "componentize-py in $venv reports '$have', expected $COMPONENTIZE_PY_VERSION"
}
ensure_toolchain "$venv" install_componentize_py
cpy="$venv/bin/componentize-py"

# --- build -----------------------------------------------------------------
echo "componentize-py -d $wit -w action componentize app -p $plugin -p $here/lib -o $out/$component" >&2
start=$(date +%s)
(cd "$plugin" && "$cpy" -d "$wit" -w action componentize app -p "$plugin" -p "$here/lib" -o "$out/$component")
end=$(date +%s)
# componentize-py's interpreter leaves bytecode next to the sources.
rm -rf "$plugin/__pycache__" "$here/lib/__pycache__"

digest="$(write_pinned_manifest "$plugin" "$out" "$component")"

size=$(stat -c %s "$out/$component")
echo "built $out/$component ($size bytes, sha256 $digest) in $((end - start)) s" >&2
