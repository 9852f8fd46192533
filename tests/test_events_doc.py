"""docs/events.md and the catalog served by the API come from one table and must agree."""

from __future__ import annotations

import re

from streamapp.catalog import CATALOG
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "events.md").read_text()


def _documented() -> dict[str, set[str]]:
    sections = re.split(r"^### ", DOC, flags=re.M)[1:]
    return {
        re.match(r"`(\w+)`", s).group(1): set(re.findall(r"^\| `(\w+)` \|", s, flags=re.M)) for s in sections
    }


def test_every_catalog_type_and_field_is_documented():
    documented = _documented()
    assert set(documented) == set(CATALOG)
    for name, spec in CATALOG.items():
        assert documented[name] == {f.name for f in spec.fields}, name


def test_catalog_endpoint_is_the_same_table(client, account):
    body = client.get("/api/v0/events/catalog", headers=account.headers).get_json()
    served = {t["type"]: {f["name"] for f in t["fields"]} for t in body["types"]}
    assert served == _documented()
