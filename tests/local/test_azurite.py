"""Azurite as the local stack starts it: local/azurite_speedups.js preloaded, answering exactly like stock Azurite."""
import json
import shutil
import subprocess

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from local.azurite import ROOT, SPEEDUPS, Azurite

PARTITIONS = ["org-a", "org-b", "org-c"]


@pytest.fixture
def table(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    client = service.create_table("pointlookups")
    yield client
    service.delete_table("pointlookups")


def test_rows_sharing_a_row_key_stay_apart_in_every_operation(table):
    """The preload looks the RowKey up first; the PartitionKey must still pick the one row of that partition."""
    for n, pk in enumerate(PARTITIONS):
        table.create_entity({"PartitionKey": pk, "RowKey": "same-id", "n": n})
    assert [table.get_entity(pk, "same-id")["n"] for pk in PARTITIONS] == [0, 1, 2]

    with pytest.raises(ResourceExistsError):
        table.create_entity({"PartitionKey": "org-b", "RowKey": "same-id", "n": 9})
    table.update_entity({"PartitionKey": "org-b", "RowKey": "same-id", "m": "merged"}, mode=UpdateMode.MERGE)
    table.update_entity({"PartitionKey": "org-c", "RowKey": "same-id", "n": 7}, mode=UpdateMode.REPLACE)
    table.submit_transaction([("delete", {"PartitionKey": "org-a", "RowKey": "same-id"}),
                              ("create", {"PartitionKey": "org-a", "RowKey": "other", "n": 3})])

    with pytest.raises(ResourceNotFoundError):
        table.get_entity("org-a", "same-id")
    assert table.get_entity("org-b", "same-id")["n"] == 1 and table.get_entity("org-b", "same-id")["m"] == "merged"
    assert table.get_entity("org-c", "same-id")["n"] == 7 and "m" not in table.get_entity("org-c", "same-id")
    rows = sorted((e["PartitionKey"], e["RowKey"]) for e in table.list_entities())
    assert rows == [("org-a", "other"), ("org-b", "same-id"), ("org-c", "same-id")]
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("org-d", "same-id")


NODE_CHECK = r"""
const Loki = require(require.resolve("lokijs", { paths: [require("path").dirname(require.resolve("azurite/package.json"))] }));
const patched = Loki.Collection.prototype.findOne;
const db = new Loki("check");
const coll = db.addCollection("entities", { indices: ["PartitionKey", "RowKey"] });
let seed = 7;
const rnd = (n) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
for (let i = 0; i < 3000; i++) {
  const doc = { PartitionKey: "p" + rnd(5), RowKey: "r" + rnd(400), n: i };
  if (!coll.find({ PartitionKey: doc.PartitionKey, RowKey: doc.RowKey }).length) coll.insert(doc);
  if (i % 7 === 0) { const gone = coll.findOne({ PartitionKey: "p" + rnd(5), RowKey: "r" + rnd(400) }); if (gone) coll.remove(gone); }
}
let checked = 0, mismatches = 0;
for (let p = 0; p < 6; p++) for (let r = 0; r < 410; r++) {
  const q = { PartitionKey: "p" + p, RowKey: "r" + r };
  const want = coll.data.find((d) => d.PartitionKey === q.PartitionKey && d.RowKey === q.RowKey) || null;
  if (coll.findOne(q) !== want) mismatches++;
  checked++;
}
const store = require(require("path").join(require("path").dirname(require.resolve("azurite/package.json")),
  "dist/src/table/persistence/LokiTableMetadataStore")).default;
const queries = store.prototype.queryTableEntities.toString().includes("pinned(");
console.log(JSON.stringify({ replaced: patched.toString().includes("RowKey: query.RowKey"), queries, checked, mismatches }));
"""


def test_preloaded_find_one_answers_like_a_full_scan():
    node = shutil.which("node")
    assert node, "node runs Azurite; the local stack needs it on PATH"
    out = subprocess.run([node, "--require", str(SPEEDUPS), "-e", NODE_CHECK], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result == {"replaced": True, "queries": True, "checked": 2460, "mismatches": 0}


FILTERS = [
    "PartitionKey eq 'p1'",
    "PartitionKey eq 'p1' and n ge 10",
    "(PartitionKey eq 'it''s') and (kind eq 'user')",
    "kind eq 'user' and PartitionKey eq 'p2' and n lt 30",
    "PartitionKey eq 'p1' and name eq 'x or not y'",
    "PartitionKey eq 'p1' or PartitionKey eq 'p2'",
    "not (PartitionKey eq 'p1')",
    "RowKey ge '10' and RowKey lt '5'",
    "PartitionKey ge 'p1' and PartitionKey lt 'p3'",
    "PartitionKey eq 'p1' and PartitionKey eq 'p2'",
    "PartitionKey eq 'nothing'",
    "PartitionKey eq 'p1' and subscriptionId eq 's' and flag eq true",
    "(flag eq false) and PartitionKey eq 'p2'",
    "PartitionKey eq 'p1' and flag eq TRUE and n lt 40",
]


def _load(client, rows) -> None:
    for pk in {r["PartitionKey"] for r in rows}:
        batch = [("upsert", r) for r in rows if r["PartitionKey"] == pk]
        for i in range(0, len(batch), 100):
            client.submit_transaction(batch[i:i + 100])


def _paged(client, query: str, per_page: int, between=None) -> list[tuple]:
    out = []
    for n, page in enumerate(client.query_entities(query, results_per_page=per_page).by_page()):
        out += [(e["PartitionKey"], e["RowKey"], tuple(sorted((k, v) for k, v in e.items() if k != "Timestamp")))
                for e in page]
        if between and n == 0:
            between(client)
    return out


def test_query_pages_answer_like_stock_azurite(azurite):
    """Differential: the preloaded query path against stock Azurite, including writes between two pages."""
    flags = [True, False, "true", None]  # None: the property is absent
    rows = [{"PartitionKey": pk, "RowKey": rk, "n": i, "kind": "user" if i % 3 else "claim", "name": "x or not y",
             "subscriptionId": "s", **({"flag": flags[i % 4]} if flags[i % 4] is not None else {})}
            for pk in ("p1", "p2", "it's", "p10") for i, rk in enumerate(
                ["10", "9", "010", "1e3", "a", "B", "|n|x", "Zoë", "z", *[f"u{j:03d}" for j in range(60)]])]

    def write_between(client) -> None:  # before and after the continuation, a merge, a replace and a delete
        client.upsert_entity({"PartitionKey": "p1", "RowKey": "0000", "n": 1, "kind": "user"})
        client.upsert_entity({"PartitionKey": "p1", "RowKey": "zzzz", "n": 99, "kind": "user"})
        client.upsert_entity({"PartitionKey": "p1", "RowKey": "u030", "merged": True}, mode=UpdateMode.MERGE)
        client.update_entity({"PartitionKey": "p1", "RowKey": "u031", "n": -31}, mode=UpdateMode.REPLACE)
        client.submit_transaction([("upsert", {"PartitionKey": "p1", "RowKey": "u032", "batch": 1}, {"mode": "merge"}),
                                   ("create", {"PartitionKey": "p1", "RowKey": "u0325"})])
        client.delete_entity("p1", "u059")

    stock = Azurite(speedups=False).start()
    try:
        answers = {}
        for name, server in (("preloaded", azurite), ("stock", stock)):
            service = TableServiceClient.from_connection_string(server.connection_string)
            table = f"differential{name}"
            client = service.create_table(table)
            try:
                _load(client, rows)
                answers[name] = [_paged(client, f, per) for f in FILTERS for per in (1000, 7, 1)]
                answers[name].append(_paged(client, "PartitionKey eq 'p1'", 5, between=write_between))
            finally:
                service.delete_table(table)
    finally:
        stock.stop()
    assert answers["preloaded"] == answers["stock"]
    assert len(answers["stock"][0]) == 69
    last = {(pk, rk): dict(props) for pk, rk, props in answers["stock"][-1]}
    assert ("p1", "zzzz") in last and ("p1", "u059") not in last and ("p1", "u0325") in last
    assert last[("p1", "u030")]["merged"] is True and last[("p1", "u031")]["n"] == -31 and "kind" not in last[("p1", "u031")]
