# Shared by sdk/python/build.sh, sdk/js/build.sh and sdk/harness/try.sh (sourced,
# not run): where the Python and JS toolchains live, and installing them once.
# Callers define die().
#
# Toolchains go into a user cache, never into the Sluice checkout or the plugin:
#   $SLUICE_TOOLCHAINS                        when set
#   $XDG_CACHE_HOME/sluice/toolchains         otherwise, when XDG_CACHE_HOME is set
#   $HOME/.cache/sluice/toolchains            otherwise
# Each toolchain has its own directory named by its versions, so two versions can
# live side by side and deleting a directory is always safe.

# Print the toolchain cache root.
toolchains_root() {
  if [[ -n "${SLUICE_TOOLCHAINS:-}" ]]; then
    echo "$SLUICE_TOOLCHAINS"
  elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then
    echo "$XDG_CACHE_HOME/sluice/toolchains"
  elif [[ -n "${HOME:-}" ]]; then
    echo "$HOME/.cache/sluice/toolchains"
  else
    die "neither SLUICE_TOOLCHAINS, XDG_CACHE_HOME nor HOME is set; set SLUICE_TOOLCHAINS to a directory for the toolchains"
  fi
}

# ensure_toolchain <dir> <install-function>: run <install-function> <dir> unless
# <dir>/.complete exists. Builds running at the same time (the test suite runs
# several) wait for one another on a lock instead of installing over each other.
# A half-finished install (no .complete) is deleted and redone.
ensure_toolchain() {
  local dir="$1" install="$2"
  [[ -f "$dir/.complete" ]] && return 0
  mkdir -p "$(dirname "$dir")" || die "cannot create $(dirname "$dir") (set SLUICE_TOOLCHAINS to a writable directory)"
  (
    if command -v flock >/dev/null; then
      exec 9>"$dir.lock"
      flock 9
    fi
    [[ -f "$dir/.complete" ]] && exit 0
    rm -rf "$dir"
    mkdir -p "$dir"
    "$install" "$dir" || exit 1
    touch "$dir/.complete"
  ) || die "installing the toolchain into $dir failed (see above)"
}
