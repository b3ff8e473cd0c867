"""Your first call: the 10 newest audit events of your tenant, printed as JSON.

Needs VELORA_API_KEY; VELORA_BASE_URL defaults to https://api.velora.health.
"""

import json
import os

import httpx

base_url = os.environ.get("VELORA_BASE_URL", "https://api.velora.health")
api_key = os.environ["VELORA_API_KEY"]

response = httpx.get(
    f"{base_url}/api/v2/public/audit/events",
    params={"limit": 10},
    headers={"Authorization": f"Bearer {api_key}"},
)
if response.is_error:
    raise SystemExit(f"HTTP {response.status_code}: {response.text}")
print(json.dumps(response.json(), indent=2))
