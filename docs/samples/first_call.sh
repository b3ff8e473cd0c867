#!/usr/bin/env sh
# Your first call: the 10 newest audit events of your tenant, as JSON.
# Needs VELORA_API_KEY; VELORA_BASE_URL defaults to https://api.velora.health.
set -eu
curl --silent --show-error --fail-with-body \
  -H "Authorization: Bearer $VELORA_API_KEY" \
  "${VELORA_BASE_URL:-https://api.velora.health}/api/v2/public/audit/events?limit=10"
echo
