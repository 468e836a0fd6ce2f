# Shared by sdk/js/build.sh and sdk/harness/try.sh (sourced, not run): the JS
# toolchain's versions and its install into the user's toolchain cache.
# Callers define die() and source ../toolchain.sh first.

JCO_VERSION="1.35.0"
COMPONENTIZE_JS_VERSION="0.23.0"

# Install jco and componentize-js from npm into <dir> (see ensure_toolchain).
install_js_tools() {
  local tools="$1" have
  command -v node >/dev/null || die "node not found; install Node.js 20+ to build JS plugins"
  command -v npm >/dev/null || die "npm not found; install npm to build JS plugins"
  echo "installing @bytecodealliance/jco@$JCO_VERSION and @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION into $tools" >&2
  echo '{"name":"sluice-js-tools","private":true}' > "$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --save-exact \
      "@bytecodealliance/jco@$JCO_VERSION" \
      "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" >&2) \
    || die "could not install jco/componentize-js from npm (is the npm registry reachable?)"
  have="$(node -p "require('$tools/node_modules/@bytecodealliance/jco/package.json').version" 2>/dev/null)" || true
  [[ "$have" == "$JCO_VERSION" ]] || die "jco $JCO_VERSION did not install in $tools (found '$have')"
}

# Make sure the JS toolchain is installed; prints its directory (holding node_modules/).
ensure_js_tools() {
  local tools
  tools="$(toolchains_root)/jco-$JCO_VERSION-componentize-js-$COMPONENTIZE_JS_VERSION"
  command -v node >/dev/null || die "node not found; install Node.js 20+ to build JS plugins"
  ensure_toolchain "$tools" install_js_tools >&2
  echo "$tools"
}
