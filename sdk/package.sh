# Shared by sdk/python/build.sh and sdk/js/build.sh (sourced, not run): reading a
# plugin's manifest and writing the packaged manifest with the component's sha256.
# Callers define die().

# Print the `component = "..."` file name of <plugin-dir>/plugin.toml; refuse a
# source manifest that already pins a digest (the build writes it).
plugin_component() {
  local manifest="$1/plugin.toml" component
  [[ -f "$manifest" ]] || die "$manifest is missing"
  component="$(sed -n 's/^[[:space:]]*component[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$manifest" | head -n1)"
  [[ -n "$component" ]] || die "$manifest has no component = \"<file>.wasm\" line"
  grep -q '^[[:space:]]*sha256[[:space:]]*=' "$manifest" \
    && die "$manifest must not carry sha256; the build writes it"
  echo "$component"
}

# Write <out-dir>/plugin.toml: <plugin-dir>/plugin.toml with `sha256 = "<digest of
# the component>"` after its component line. Prints the digest.
write_pinned_manifest() {
  local plugin="$1" out="$2" component="$3" digest
  digest="$(sha256sum "$out/$component" | awk '{print $1}')"
  awk -v d="$digest" '
    { print }
    !done && /^[[:space:]]*component[[:space:]]*=/ { print "sha256 = \"" d "\""; done = 1 }
  ' "$plugin/plugin.toml" > "$out/plugin.toml"
  echo "$digest"
}
