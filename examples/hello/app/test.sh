#!/bin/sh
# Test the built site and write a JUnit report for the gate.
set -u
mkdir -p reports
pass=0; fail=0; cases=""
check() {
  if eval "$2"; then pass=$((pass+1)); cases="$cases<testcase classname=\"site\" name=\"$1\"/>"
  else fail=$((fail+1)); cases="$cases<testcase classname=\"site\" name=\"$1\"><failure message=\"failed\"/></testcase>"; fi
}
check "has_index" "[ -f dist/index.html ]"
check "has_greeting" "grep -q '<h1>' dist/index.html"
check "has_stylesheet" "[ -f dist/style.css ]"
printf '<testsuite name="site" tests="%s" failures="%s">%s</testsuite>\n' $((pass+fail)) "$fail" "$cases" > reports/junit.xml
echo "$pass passed, $fail failed"
