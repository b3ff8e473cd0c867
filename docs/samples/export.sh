#!/usr/bin/env sh
# Download the last 7 days as NDJSON (one event per line, oldest first) into a file.
# Needs VELORA_API_KEY (scope audit:export); VELORA_BASE_URL defaults to https://api.velora.health.
# VELORA_SINCE / VELORA_UNTIL override the range; VELORA_OUT the file (default audit.ndjson).
set -eu
until="${VELORA_UNTIL:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
since="${VELORA_SINCE:-$(date -u -d '7 days ago' +%Y-%m-%dT%H:%M:%SZ)}"
out="${VELORA_OUT:-audit.ndjson}"
curl --silent --show-error --fail-with-body --get --output "$out" \
  -H "Authorization: Bearer $VELORA_API_KEY" \
  --data-urlencode "since=$since" --data-urlencode "until=$until" \
  --data-urlencode "format=ndjson" \
  "${VELORA_BASE_URL:-https://api.velora.health}/api/v2/public/audit/export" \
  || { cat "$out" >&2; echo >&2; rm -f "$out"; exit 1; }  # the error body, then fail
echo "$(wc -l < "$out") events written to $out"
