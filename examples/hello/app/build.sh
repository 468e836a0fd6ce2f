#!/bin/sh
# Build the site: render the page from the template with the pipeline's variables.
set -eu
mkdir -p dist
sed -e "s/{{greeting}}/${GREETING}/" -e "s/{{environment}}/${ENVIRONMENT}/" index.html.in > dist/index.html
cp style.css dist/
echo "built $(ls dist | wc -l) files"
echo "::set-variable pages=$(ls dist/*.html | wc -l)"
