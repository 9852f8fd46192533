"""Execution ids: one pattern and one rule, held by the API, the producer and the lookups (SPEC §2)."""

from __future__ import annotations

import pytest

from streamapp import create_execution
from streamapp.errors import Invalid
from streamapp.exec_ids import EXEC_ID_PATTERN
from streamapp.exec_ids import EXEC_ID_RULE
from streamapp.exec_ids import new_exec_id


def test_new_ids_are_ids_the_api_accepts_and_differ():
    ids = {new_exec_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(EXEC_ID_PATTERN.fullmatch(exec_id) for exec_id in ids)


@pytest.mark.parametrize("exec_id", ["a b", "é", "x" * 65, "a/b"])
def test_the_api_and_the_producer_refuse_an_id_in_the_same_words(client, db, account, exec_id):
    r = client.post("/api/v0/executions/workflows", json={"name": "n", "exec_id": exec_id}, headers=account.headers)
    assert r.status_code == 422 and EXEC_ID_RULE in r.get_json()["error"]["message"]
    with pytest.raises(Invalid, match="exec_id") as refused, db.transaction() as cur:
        create_execution(cur, "workflow", "n", account.user.get_id(), exec_id=exec_id)
    assert EXEC_ID_RULE in refused.value.message


@pytest.mark.parametrize("exec_id", ["a b", "x" * 65])
def test_a_malformed_id_is_an_unknown_execution_to_readers(client, account, exec_id):
    assert client.get(f"/api/v0/executions/workflows/{exec_id}", headers=account.headers).status_code == 404
