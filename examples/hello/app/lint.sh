#!/bin/sh
# Lint: every template placeholder must be one the build knows.
set -eu
unknown=$(grep -o '{{[a-z]*}}' index.html.in | grep -v -e greeting -e environment || true)
if [ -n "$unknown" ]; then echo "unknown placeholders: $unknown" >&2; exit 1; fi
echo "lint ok"
