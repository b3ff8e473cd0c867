"""Walk every page of a filtered query by following next_cursor (or the Link header).

Prints one line per event, then a total. Needs VELORA_API_KEY; VELORA_BASE_URL
defaults to https://api.velora.health. Optional: VELORA_ACTION (default "claim.*").
"""

import os

import httpx

base_url = os.environ.get("VELORA_BASE_URL", "https://api.velora.health")
headers = {"Authorization": f"Bearer {os.environ['VELORA_API_KEY']}"}
params = {"action": os.environ.get("VELORA_ACTION", "claim.*"), "limit": 100}

total = 0
with httpx.Client(base_url=base_url, headers=headers) as client:
    while True:
        response = client.get("/api/v2/public/audit/events", params=params)
        if response.status_code == 429:
            raise SystemExit(f"rate limited; retry after {response.headers['Retry-After']} s")
        response.raise_for_status()
        page = response.json()
        for event in page["events"]:
            print(event["occurred_at"], event["action"], event["actor"]["id"], event["event_id"])
        total += len(page["events"])
        cursor = page["page"]["next_cursor"]
        if cursor is None:
            break
        params["cursor"] = cursor  # same filters, next page
print(f"{total} events")
