#!/usr/bin/env sh
# The summary of the last 7 days (and the 7 days before), as JSON.
# Needs VELORA_API_KEY; VELORA_BASE_URL defaults to https://api.velora.health.
# VELORA_SINCE / VELORA_UNTIL override the range (ISO-8601 with an offset; GNU date below).
set -eu
until="${VELORA_UNTIL:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
since="${VELORA_SINCE:-$(date -u -d '7 days ago' +%Y-%m-%dT%H:%M:%SZ)}"
curl --silent --show-error --fail-with-body --get \
  -H "Authorization: Bearer $VELORA_API_KEY" \
  --data-urlencode "since=$since" --data-urlencode "until=$until" \
  "${VELORA_BASE_URL:-https://api.velora.health}/api/v2/public/analytics/summary"
echo
