"""A minimal webhook receiver for the webhook benchmark (its own process, raw ASGI).

``POST /hook`` answers 200 at once and records, for each envelope in the body, its
id and the arrival time (``time.time()``); ``GET /stats`` returns them. Signatures
are not checked here: the benchmark measures the sender.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

ARRIVALS: dict[str, float] = {}
REQUESTS = [0]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":
        payload = json.dumps({"requests": REQUESTS[0], "arrivals": ARRIVALS}).encode()
    else:
        now = time.time()
        REQUESTS[0] += 1
        for line in body.splitlines():
            if line.strip():
                ARRIVALS.setdefault(json.loads(line)["id"], now)
        payload = b"{}"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=75,  # the senders keep connections; never close one under them
    )
