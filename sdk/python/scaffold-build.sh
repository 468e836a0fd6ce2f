#!/usr/bin/env bash
# Build this plugin and package it into dist/{{name}}/ with its sha256 pinned;
# then: sluice plugin install dist/{{name}}
set -euo pipefail
cd "$(dirname "$0")"
"{{sdk}}/build.sh" . "dist/{{name}}"
