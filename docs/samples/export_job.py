"""Export the last 7 days as Parquet through an export job: start it, wait, download.

Needs VELORA_API_KEY (scope audit:export); VELORA_BASE_URL defaults to
https://api.velora.health. VELORA_SINCE / VELORA_UNTIL override the range;
VELORA_OUT the file (default audit.parquet).
"""

import os
import time
from datetime import UTC, datetime, timedelta

import httpx

base_url = os.environ.get("VELORA_BASE_URL", "https://api.velora.health")
headers = {"Authorization": f"Bearer {os.environ['VELORA_API_KEY']}"}
now = datetime.now(UTC)
params = {
    "since": os.environ.get("VELORA_SINCE", (now - timedelta(days=7)).isoformat()),
    "until": os.environ.get("VELORA_UNTIL", now.isoformat()),
    "format": "parquet",
}
out = os.environ.get("VELORA_OUT", "audit.parquet")

with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
    response = client.post("/api/v2/public/audit/exports", params=params)
    response.raise_for_status()
    job = response.json()
    while job["status"] in ("queued", "running"):
        time.sleep(1)
        response = client.get(f"/api/v2/public/audit/exports/{job['id']}")
        response.raise_for_status()
        job = response.json()
    if job["status"] != "done":
        raise SystemExit(f"export {job['id']} {job['status']}: {job['error']}")

# The signed download URL needs no key until job["expires_at"].
with httpx.stream("GET", job["download_url"], timeout=60) as download, open(out, "wb") as f:
    download.raise_for_status()
    for chunk in download.iter_bytes():
        f.write(chunk)
print(f"{job['rows']} events written to {out}")
