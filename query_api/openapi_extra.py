"""The OpenAPI paths and schemas of the analytics and export routes (merged by
:func:`query_api.openapi.openapi_document`), written by hand to match the behaviour."""

from __future__ import annotations

from typing import Any

from query_api.analytics import GROUP_BY, MAX_SERIES, TOP_DIMENSIONS
from query_api.analytics_routes import TOP_DEFAULT_LIMIT, TOP_MAX_LIMIT
from query_api.exports import CSV_COLUMNS, FORMATS
from query_api.openapi import (
    _ERRORS,
    _LIST_PARAMETERS,
    _NULLABLE_STRING,
    _RATE_HEADERS,
    _error,
    _header,
    _param,
    _ref,
)
from query_api.ranges import AUTO_MAX_BUCKETS, FILTER_PARAMETERS, MAX_BUCKETS, MAX_RANGE

_FILTERS = [p for p in _LIST_PARAMETERS if p["name"] in FILTER_PARAMETERS]
_RANGE = [
    {
        **p,
        "required": True,
        "description": p["description"]
        + f" Required; `since < until`, at most {MAX_RANGE.days} days apart.",
    }
    if p["name"] in ("since", "until")
    else p
    for p in _FILTERS
]
_INTERVAL = _param(
    "interval",
    f"Bucket length: `minute`, `hour`, `day` (UTC-aligned), or `auto` (default): the finest "
    f"with at most {AUTO_MAX_BUCKETS} buckets. An explicit interval may give at most "
    f"{MAX_BUCKETS} buckets.",
    {"type": "string", "enum": ["minute", "hour", "day", "auto"], "default": "auto"},
)
_TIME_OUT = {"type": "string", "format": "date-time"}
_COUNTS = {"type": "array", "items": {"type": "integer", "minimum": 0}}


def _ok(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_RATE_HEADERS, **(headers or {})},
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _get(op_id: str, summary: str, description: str, params: list, ok: dict) -> dict:
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "description": description,
            "parameters": params,
            "responses": {"200": ok, **_ERRORS},
        }
    }


_FIGURES = {
    "type": "object",
    "required": [
        "since",
        "until",
        "total",
        "distinct_actors",
        "distinct_targets",
        "failures",
        "failure_rate",
        "busiest_bucket",
    ],
    "properties": {
        "since": _TIME_OUT,
        "until": _TIME_OUT,
        "total": {"type": "integer"},
        "distinct_actors": {"type": "integer"},
        "distinct_targets": {"type": "integer"},
        "failures": {"type": "integer", "description": "Outcome `failure` or `denied`."},
        "failure_rate": {"type": ["number", "null"], "description": "failures / total."},
        "busiest_bucket": {
            "type": ["object", "null"],
            "required": ["start", "count"],
            "properties": {"start": _TIME_OUT, "count": {"type": "integer"}},
        },
    },
}
_CHANGE = {
    "type": "object",
    "required": ["absolute", "relative"],
    "properties": {
        "absolute": {"type": ["number", "null"]},
        "relative": {"type": ["number", "null"], "description": "null when the previous is 0."},
    },
}

SCHEMAS: dict[str, Any] = {
    "TimeSeries": {
        "type": "object",
        "required": ["since", "until", "interval", "buckets", "counts", "total"],
        "properties": {
            "since": _TIME_OUT,
            "until": _TIME_OUT,
            "interval": {"type": "string", "enum": ["minute", "hour", "day"]},
            "buckets": {"type": "array", "items": _TIME_OUT, "description": "Bucket starts."},
            "counts": _COUNTS,
            "total": {"type": "integer"},
            "group_by": {"type": "string", "enum": list(GROUP_BY)},
            "series": {
                "type": "array",
                "maxItems": MAX_SERIES,
                "items": {
                    "type": "object",
                    "required": ["key", "total", "counts"],
                    "properties": {
                        "key": {"type": "string"},
                        "total": {"type": "integer"},
                        "counts": _COUNTS,
                    },
                },
            },
            "other": {
                "type": ["object", "null"],
                "required": ["keys", "total", "counts"],
                "properties": {
                    "keys": {"type": "integer"},
                    "total": {"type": "integer"},
                    "counts": _COUNTS,
                },
            },
        },
    },
    "TopKeys": {
        "type": "object",
        "required": ["since", "until", "dimension", "limit", "total", "items"],
        "properties": {
            "since": _TIME_OUT,
            "until": _TIME_OUT,
            "dimension": {"type": "string", "enum": list(TOP_DIMENSIONS)},
            "limit": {"type": "integer"},
            "total": {"type": "integer", "description": "Events matching the filters."},
            "items": {
                "type": "array",
                "description": "By count descending, then key ascending.",
                "items": {
                    "type": "object",
                    "required": ["key", "count", "share"],
                    "properties": {
                        "key": {"type": "string"},
                        "count": {"type": "integer"},
                        "share": {"type": "number", "description": "count / total."},
                    },
                },
            },
        },
    },
    "Summary": {
        "type": "object",
        "required": ["interval", "current", "previous", "change"],
        "properties": {
            "interval": {"type": "string", "enum": ["minute", "hour", "day"]},
            "current": _FIGURES,
            "previous": _FIGURES,
            "change": {
                "type": "object",
                "properties": {
                    k: _CHANGE
                    for k in (
                        "total",
                        "distinct_actors",
                        "distinct_targets",
                        "failures",
                        "failure_rate",
                    )
                },
            },
        },
    },
    "ExportJob": {
        "type": "object",
        "required": [
            "id",
            "status",
            "format",
            "since",
            "until",
            "filters",
            "rows",
            "created_at",
            "finished_at",
            "download_url",
            "expires_at",
            "error",
        ],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "format": {"type": "string", "enum": list(FORMATS)},
            "since": _TIME_OUT,
            "until": _TIME_OUT,
            "filters": {"type": "object", "additionalProperties": {"type": "string"}},
            "rows": {"type": "integer"},
            "created_at": _TIME_OUT,
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "download_url": {
                "type": ["string", "null"],
                "description": "Signed; valid until expires_at, without a key.",
            },
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
            "error": _NULLABLE_STRING,
        },
    },
}

_FORMAT = _param(
    "format",
    "`ndjson` (default: one event per line, as the list API shows it), `csv` (columns: "
    + ", ".join(f"`{name}`" for name, _ in CSV_COLUMNS)
    + ") or `parquet` (typed, nested).",
    {"type": "string", "enum": list(FORMATS), "default": "ndjson"},
)
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}
_EXPORT_403 = _error("The API key lacks the `audit:export` scope.")


def paths(prefix: str) -> dict[str, Any]:
    """The analytics and export paths under ``prefix``."""
    base = f"{prefix}/analytics"
    stream_ok = {
        "description": "The export, streamed, oldest first.",
        "headers": {
            **_RATE_HEADERS,
            "Content-Disposition": _header("`attachment; filename=...`", {"type": "string"}),
        },
        "content": {
            fmt.media_type: {"schema": {"type": "string", "format": "binary"}}
            for fmt in FORMATS.values()
        },
    }
    return {
        f"{base}/timeseries": _get(
            "analyticsTimeseries",
            "Event counts per UTC bucket",
            "Requires scope `audit:read`. Zero-filled buckets covering the whole range; with "
            f"`group_by`, up to {MAX_SERIES} series (by total, then key) and `other`.",
            [
                *_RANGE,
                _INTERVAL,
                _param(
                    "group_by",
                    "Split the counts by this field.",
                    {"type": "string", "enum": list(GROUP_BY)},
                ),
            ],
            _ok("Counts per bucket.", "TimeSeries"),
        ),
        f"{base}/top": _get(
            "analyticsTop",
            "The most frequent actors, actions, targets or source IPs",
            "Requires scope `audit:read`. Ordered by count descending, ties by key ascending.",
            [
                *_RANGE,
                {
                    **_param(
                        "dimension",
                        "What to rank.",
                        {"type": "string", "enum": list(TOP_DIMENSIONS)},
                    ),
                    "required": True,
                },
                _param(
                    "limit",
                    f"Keys to return, 1..{TOP_MAX_LIMIT}.",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": TOP_MAX_LIMIT,
                        "default": TOP_DEFAULT_LIMIT,
                    },
                ),
            ],
            _ok("The top keys.", "TopKeys"),
        ),
        f"{base}/summary": _get(
            "analyticsSummary",
            "Totals for the period and the previous period of equal length",
            "Requires scope `audit:read`.",
            [*_RANGE, _INTERVAL],
            _ok("The figures and their change.", "Summary"),
        ),
        f"{prefix}/audit/export": {
            "get": {
                "operationId": "exportAuditEvents",
                "summary": "Export audit events (streamed)",
                "description": "Requires scope `audit:export`. Oldest first by "
                "(occurred_at, event_id). Recorded in the trail as `audit_log.exported`.",
                "parameters": [*_RANGE, _FORMAT],
                "responses": {"200": stream_ok, **_ERRORS, "403": _EXPORT_403},
            }
        },
        f"{prefix}/audit/exports": {
            "post": {
                "operationId": "createExportJob",
                "summary": "Start an export job",
                "description": "Requires scope `audit:export`. Same parameters as the streamed "
                "export; poll the job for its download URL.",
                "parameters": [*_RANGE, _FORMAT],
                "responses": {
                    "202": _ok(
                        "The job was queued.",
                        "ExportJob",
                        {"Location": _header("The job's URL.", {"type": "string"})},
                    ),
                    **_ERRORS,
                    "403": _EXPORT_403,
                },
            }
        },
        f"{prefix}/audit/exports/{{job_id}}": {
            "get": {
                "operationId": "getExportJob",
                "summary": "An export job's status",
                "description": "Requires scope `audit:export`. Another tenant's job is a 404.",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _ok("The job.", "ExportJob"),
                    **_ERRORS,
                    "403": _EXPORT_403,
                    "404": _error("No such job for this tenant."),
                },
            }
        },
        f"{prefix}/audit/export-files/{{job_id}}": {
            "get": {
                "operationId": "downloadExport",
                "summary": "Download a finished export (signed link)",
                "description": "The `download_url` of a done job; needs no key until it expires.",
                "security": [],
                "parameters": [
                    _JOB_ID,
                    {**_param("expires", "Unix time.", {"type": "integer"}), "required": True},
                    {**_param("signature", "Signature.", {"type": "string"}), "required": True},
                ],
                "responses": {
                    "200": {
                        "description": "The export file.",
                        "content": {
                            fmt.media_type: {"schema": {"type": "string", "format": "binary"}}
                            for fmt in FORMATS.values()
                        },
                    },
                    "404": {
                        "description": "Unknown job, bad signature or expired link.",
                        "content": {"application/json": {"schema": _ref("Error")}},
                    },
                },
            }
        },
    }
