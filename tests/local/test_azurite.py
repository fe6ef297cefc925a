"""Azurite as the local stack starts it: with local/azurite_point_lookups.js preloaded (key lookups by RowKey index)."""
import json
import shutil
import subprocess

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from local.azurite import POINT_LOOKUPS, ROOT

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
console.log(JSON.stringify({ replaced: patched.toString().includes("RowKey: query.RowKey"), checked, mismatches }));
"""


def test_preloaded_find_one_answers_like_a_full_scan():
    node = shutil.which("node")
    assert node, "node runs Azurite; the local stack needs it on PATH"
    out = subprocess.run([node, "--require", str(POINT_LOOKUPS), "-e", NODE_CHECK], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result == {"replaced": True, "checked": 2460, "mismatches": 0}
