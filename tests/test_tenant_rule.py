"""One tenant-id rule for every entry point (issue 14 finding 5).

An id that one entry point accepts, all accept, and an id one refuses, all refuse:
ingest validation, ``velora keys create``, ``velora keys list --tenant``,
``velora demo load --tenant`` and the public API (a key of that tenant reads the
tenant's events).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cli.main import main
from ingest import validate_event
from schemas.rules import valid_tenant
from tests.api_support import insert_events, make_event, running_api
from tests.test_producer import raw_event
from velora.errors import ValidationError

ACCEPTED = ["acme:prod-x", "a", "A.b_c-d:e", "9" + "x" * 63, "tenant_01.eu-west:2"]
REFUSED = ["bad tenant!", "-x", ".x", "x" * 65, "é", "a/b", "a\nb", ""]


@pytest.fixture
def cli(settings, monkeypatch, capsys):
    monkeypatch.setenv("VELORA_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VELORA_TOPIC_PREFIX", settings.topic_prefix)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def ingest_accepts(tenant: str) -> bool:
    try:
        validate_event(raw_event(tenant=tenant), datetime.now(UTC))
    except ValidationError as exc:
        assert [d.field for d in exc.details] == ["tenant_id"]
        return False
    return True


def cli_accepts(cli, *argv: str) -> bool:
    code, _out, err = cli(*argv)
    assert code in (0, 2), err
    if code == 2:
        assert "tenant" in err
    return code == 0


@pytest.mark.parametrize("tenant", ACCEPTED + REFUSED)
def test_every_entry_point_agrees_on_a_tenant_id(cli, settings, tenant):
    verdicts = {
        "rule": valid_tenant(tenant),
        "ingest": ingest_accepts(tenant),
        "keys create": cli_accepts(
            cli, "keys", "create", f"--tenant={tenant}", "--scopes", "audit:read"
        ),
        "keys list": cli_accepts(cli, "keys", "list", f"--tenant={tenant}"),
        "demo load": cli_accepts(cli, "demo", "load", f"--tenant={tenant}", "--events", "0"),
    }
    assert set(verdicts.values()) == {tenant in ACCEPTED}, verdicts


@pytest.mark.parametrize("tenant", ACCEPTED)
def test_the_api_serves_every_accepted_tenant(settings, tenant):
    with running_api(settings) as api:
        insert_events(api.reader, [make_event(tenant, i) for i in range(2)])
        key = api.issue(tenant)
        resp = api.get("/api/v2/public/audit/events", key.token)
        assert resp.status_code == 200
        assert {e["tenant_id"] for e in resp.json()["events"]} == {tenant}
