// Preloaded into Azurite by local/azurite.py (node --require). Local tooling only.
//
// Azurite 3.35 finds an entity with collection.findOne({PartitionKey, RowKey}). LokiJS answers an implicit $and
// with the index of the *first* property only, so every point read, insert, update, merge and delete scans the
// whole partition: a first sync of n users into one partition costs O(n^2) (measured: 20k users 123 s, 50k 1,368 s).
// Real Table Storage looks an entity up by its full key. Asking Loki for RowKey first uses its RowKey index, which
// leaves only the rows sharing that RowKey to check for the PartitionKey; the answer is the same row.
"use strict";
const path = require("path");

const azurite = path.dirname(require.resolve("azurite/package.json", { paths: [process.cwd(), __dirname] }));
const Loki = require(require.resolve("lokijs", { paths: [azurite] }));
const findOne = Loki.Collection.prototype.findOne;

Loki.Collection.prototype.findOne = function (query) {
  if (query && typeof query === "object" && this.binaryIndices && this.binaryIndices.RowKey) {
    const keys = Object.keys(query);
    if (keys.length === 2 && keys[0] === "PartitionKey" && keys[1] === "RowKey" &&
        typeof query.PartitionKey === "string" && typeof query.RowKey === "string") {
      return findOne.call(this, { RowKey: query.RowKey, PartitionKey: query.PartitionKey });
    }
  }
  return findOne.call(this, query);
};
