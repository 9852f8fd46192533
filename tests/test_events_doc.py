"""docs/events.md, the validator and the catalog endpoint come from one table and must agree (issue 5).

The page's Types section must be exactly ``events_doc.markdown()``; the other tests read the page as
a reader would (headings, field tables, example frames) and hold it against ``CATALOG``, so they
also catch a generator that renders the table wrongly.
"""

from __future__ import annotations

import json
import re

import pytest

from streamapp import catalog
from streamapp import events_doc
from streamapp.catalog import CATALOG
from streamapp.catalog import Field
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "events.md").read_text()
BEGIN = re.compile(r"<!-- BEGIN events_doc\.markdown\(\).*?-->\n", re.S)
END = "<!-- END events_doc.markdown() -->"
HEADING = re.compile(r"^### `(\w+)` — (.+) — (durable|never durable)(, terminal)?$", re.M)
ROW = re.compile(r"^\| `([\w.]+)` \| (.+) \| (.+) \|$", re.M)
FRAME = re.compile(r"^```\n(.*?)^```$", re.M | re.S)


def _sections() -> dict[str, str]:
    """Each ``### `type` `` section of the page, up to the next ``##`` heading or the generated block's end."""
    sections = {}
    for chunk in re.split(r"^(?=### )", DOC, flags=re.M)[1:]:
        chunk = re.split(r"^## |^<!-- END", chunk, flags=re.M)[0]
        name = re.match(r"### `(\w+)`", chunk)
        assert name, chunk[:80]
        sections[name.group(1)] = chunk
    return sections


SECTIONS = _sections()


def _heading(section: str) -> tuple[tuple[str, ...], bool, bool]:
    """``(kinds, durable, terminal)`` as the section's heading states them."""
    match = HEADING.match(section)
    assert match, section.splitlines()[0]
    kinds = catalog.KINDS if match.group(2) == "all kinds" else tuple(match.group(2).split(", "))
    return kinds, match.group(3) == "durable", match.group(4) is not None


def _documented_fields(section: str) -> dict[str, tuple]:
    """Each table row as ``name: (type, required, required_in, choices, own_status_choices, minimum)``."""
    rows = {}
    for name, cell, required in ROW.findall(section):
        head = cell.split(";")[0]
        choices = tuple(re.findall(r"`(\w+)`", head.partition(":")[2]))
        own = re.search(r"without `\w+`: ((?:`\w+`(?:, )?)+)", cell)
        minimum = re.search(r" ≥ (\d+)", head)
        required_in = tuple(k.removesuffix("s") for k in required.removeprefix("in ").split(", "))
        rows[name] = (
            re.match(r"\w+", head).group(),
            required == "yes",
            required_in if required.startswith("in ") else (),
            choices,
            tuple(re.findall(r"`(\w+)`", own.group(1))) if own else (),
            int(minimum.group(1)) if minimum else None,
        )
    return rows


def _catalog_fields(fields: tuple[Field, ...], prefix: str = "") -> dict[str, tuple]:
    rows = {}
    for f in fields:
        rows[prefix + f.name] = (f.type, f.required, f.required_in, f.choices, f.own_status_choices, f.minimum)
        rows.update(_catalog_fields(f.fields, f"{prefix}{f.name}."))
    return rows


def _frames(section: str) -> list[dict[str, str]]:
    """The section's example frames, each as its SSE fields (one ``data:`` line each here)."""
    return [dict(line.split(": ", 1) for line in block.splitlines()) for block in FRAME.findall(section)]


def test_types_section_is_the_generators_output():
    begin = BEGIN.search(DOC)
    assert begin and END in DOC, "docs/events.md lost its events_doc.markdown() markers"
    assert DOC[begin.end() : DOC.index(END)] == events_doc.markdown(), (
        "docs/events.md is stale: paste the output of "
        """.venv/bin/python -c "from streamapp import events_doc; print(events_doc.markdown(), end='')" """
        "between its BEGIN and END markers"
    )


def test_every_catalog_type_has_one_section():
    assert list(SECTIONS) == list(CATALOG)


@pytest.mark.parametrize("name", CATALOG)
def test_heading_states_kinds_durability_and_terminal(name):
    spec = CATALOG[name]
    assert _heading(SECTIONS[name]) == (spec.kinds, spec.durable, spec.terminal)


@pytest.mark.parametrize("name", CATALOG)
def test_field_table_matches_the_catalog(name):
    assert _documented_fields(SECTIONS[name]) == _catalog_fields(CATALOG[name].fields)


def test_agent_status_doc_allows_every_status_for_a_step():
    status = _documented_fields(SECTIONS["agent_status"])["status"]
    assert status[3] == catalog.STATUSES and status[4] == catalog.LIVE_STATUSES


@pytest.mark.parametrize("name", CATALOG)
def test_example_frame_names_its_section(name):
    frames = _frames(SECTIONS[name])
    assert len(frames) == 1, frames
    assert frames[0]["event"] == name


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if e.durable])
def test_durable_example_is_a_valid_stored_event(name):
    frame = _frames(SECTIONS[name])[0]
    envelope = json.loads(frame["data"])
    assert list(envelope) == ["id", "type", "ts", "exec_id", "kind", "data"]
    assert (int(frame["id"]), envelope["type"]) == (envelope["id"], name)
    assert envelope["kind"] in CATALOG[name].kinds
    catalog.validate_event(envelope["kind"], name, envelope["data"])


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if not e.durable])
def test_never_durable_example_has_no_id(name):
    frame = _frames(SECTIONS[name])[0]
    envelope = json.loads(frame["data"])
    assert "id" not in frame
    assert list(envelope) == ["type", "exec_id", "kind", "data"] and envelope["type"] == name
    assert set(envelope["data"]) == {f.name for f in CATALOG[name].fields}


def test_catalog_endpoint_is_the_same_table(client, account):
    body = client.get("/api/v0/events/catalog", headers=account.headers).get_json()
    served = {
        t["type"]: (tuple(t["kinds"]), t["durable"], t["terminal"], [f["name"] for f in t["fields"]])
        for t in body["types"]
    }
    documented = {
        name: (*_heading(section), [n for n in _documented_fields(section) if "." not in n])
        for name, section in SECTIONS.items()
    }
    assert served == documented
