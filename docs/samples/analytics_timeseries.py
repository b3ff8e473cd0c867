"""Events per day by action over the last 7 days, then the 5 busiest actors.

Needs VELORA_API_KEY; VELORA_BASE_URL defaults to https://api.velora.health.
VELORA_SINCE / VELORA_UNTIL override the range (ISO-8601 with an offset).
"""

import os
from datetime import UTC, datetime, timedelta

import httpx

base_url = os.environ.get("VELORA_BASE_URL", "https://api.velora.health")
headers = {"Authorization": f"Bearer {os.environ['VELORA_API_KEY']}"}
now = datetime.now(UTC)
window = {
    "since": os.environ.get("VELORA_SINCE", (now - timedelta(days=7)).isoformat()),
    "until": os.environ.get("VELORA_UNTIL", now.isoformat()),
}

with httpx.Client(base_url=base_url, headers=headers) as client:
    response = client.get(
        "/api/v2/public/analytics/timeseries",
        params={**window, "interval": "day", "group_by": "action"},
    )
    response.raise_for_status()
    series = response.json()
    print(f"{series['total']} events, {len(series['buckets'])} {series['interval']} buckets")
    for line in series["series"]:
        print(f"{line['key']:<24} {line['total']:>8}  per day: {line['counts']}")

    response = client.get(
        "/api/v2/public/analytics/top", params={**window, "dimension": "actor", "limit": 5}
    )
    response.raise_for_status()
    for item in response.json()["items"]:
        print(f"actor {item['key']:<20} {item['count']:>8}  {item['share']:.1%}")
