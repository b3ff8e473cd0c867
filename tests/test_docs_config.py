"""docs/configuration.md documents every setting, with its real default."""

from __future__ import annotations

import re
from dataclasses import fields

from tests.helpers import REPO
from velora.settings import ENV_VARS, Settings

DOC = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
ROWS = dict(re.findall(r"^\| `(VELORA_[A-Z_]+)` \| ([^|]+) \|", DOC, flags=re.M))


def test_every_setting_is_documented_and_nothing_else():
    assert set(ROWS) == set(ENV_VARS)


def test_documented_defaults_match_the_code():
    defaults = {f.name: f.default for f in fields(Settings)}
    for var, (name, _parse) in ENV_VARS.items():
        shown = ROWS[var].strip()
        if shown in {"dev value", "(none)"}:
            continue
        assert shown.strip("`") == str(defaults[name]), var
