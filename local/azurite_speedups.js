// Preloaded into Azurite by local/azurite.py (node --require). Local tooling only: it makes Azurite 3.35's Table
// service find entities the way Table Storage does (by key, and a partition's rows in RowKey order) instead of
// scanning, so a 100,000-user partition behaves like one, and refuse the entities Table Storage refuses. Answers
// are otherwise unchanged (tests/local/test_azurite.py).
//
// 1. Point lookups. Azurite finds an entity with collection.findOne({PartitionKey, RowKey}); LokiJS answers an
//    implicit $and with the index of its *first* property only, so every point read, insert, update, merge and
//    delete scanned the whole partition: a first sync of n users into one partition cost O(n^2) (20k users 123 s,
//    50k 1,368 s). Asking RowKey first uses the RowKey index and leaves only the rows sharing that RowKey.
// 2. Queries. Every page of a query ran the filter over every entity of the table, sorted all matches and kept
//    1,000, so paging through a partition cost O(n^2 / 1000). For a filter that is a conjunction containing
//    `PartitionKey eq '<pk>'`, the partition's rows are kept sorted by RowKey (sorted when first queried; later
//    writes merged in by the next query) and a page starts at its continuation by binary search and stops once
//    the page is full. Any other filter takes Azurite's own path.
// 3. Azure's entity limits. Azurite checks a request's body size and each string it carries, not the entity a
//    write stores: a row merged a property at a time grew past what Table Storage allows, and Azurite kept it.
//    Every insert, replace and merge (alone, upserted or in a $batch) now checks the entity it would store before
//    anything changes: more than 252 custom properties (255 with PartitionKey, RowKey, Timestamp) is 400
//    TooManyProperties; more than 1 MiB by Microsoft's entity-size formula is 400 EntityTooLarge; a String over
//    32K UTF-16 code units or a Binary over 64 KiB is 400 PropertyValueTooLarge. In a batch Azurite answers the
//    failing operation's error with its index and rolls the batch back. `@odata.type` keys are annotations, not
//    properties. A PartitionKey or RowKey over 1 KiB is 400 KeyValueTooLarge; one holding '/', '\', '#', '?' or a
//    control character is 400 OutOfRangeInput (Azurite stores both).
//    https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model
"use strict";
const path = require("path");

const azurite = path.dirname(require.resolve("azurite/package.json", { paths: [process.cwd(), __dirname] }));
const Loki = require(require.resolve("lokijs", { paths: [azurite] }));
const { default: LokiTableMetadataStore } = require(path.join(azurite, "dist/src/table/persistence/LokiTableMetadataStore"));
const { default: QueryGenerator } = require(path.join(azurite, "dist/src/table/persistence/LokiTableStoreQueryGenerator"));

// 1. Point lookups by RowKey index.
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

// 2. Single-partition queries in RowKey order. A partition's rows are sorted once, when it is first queried;
//    later writes are noted (rows added, rows removed) and merged into the order by the next query that reads
//    the partition, which costs a pass over it instead of a sort. Anything unusual drops the cache.
function entryOf(collection, pk) {
  return collection.__dirsyncRows && collection.__dirsyncRows.get(pk);
}

function forget(collection) {
  collection.__dirsyncRows = undefined;
}

function place(collection, doc) {
  const entry = doc && entryOf(collection, doc.PartitionKey);
  if (!entry) return;
  if (!entry.removed.delete(doc)) entry.added.push(doc); // a removed row put back (a rollback) is there already
}

function drop(collection, doc) {
  const entry = doc && entryOf(collection, doc.PartitionKey);
  if (entry) entry.removed.add(doc);
}

function tracked(name, change) {
  const original = Loki.Collection.prototype[name];
  Loki.Collection.prototype[name] = function (...args) {
    if (!this.__dirsyncRows) return original.apply(this, args);
    try {
      return change.call(this, original, args);
    } catch (error) {
      forget(this);
      throw error;
    }
  };
}

tracked("insertOne", function (original, args) {
  const inserted = original.apply(this, args);
  if (inserted) place(this, this.get(inserted.$loki));
  return inserted;
});
tracked("update", function (original, args) {
  const doc = args[0];
  if (Array.isArray(doc) || !doc || doc.$loki === undefined) {
    forget(this);
    return original.apply(this, args);
  }
  const before = this.get(doc.$loki);
  const result = original.apply(this, args);
  const after = this.get(doc.$loki);
  if (before !== after) { // Azurite replaces a row with a new object; it never changes a key in place
    drop(this, before);
    place(this, after);
  }
  return result;
});
tracked("remove", function (original, args) {
  let doc = args[0];
  if (typeof doc === "number") doc = this.get(doc);
  if (Array.isArray(doc) || !doc || doc.$loki === undefined) {
    forget(this);
    return original.apply(this, args);
  }
  const stored = this.get(doc.$loki);
  const result = original.apply(this, args);
  drop(this, stored);
  return result;
});
for (const name of ["removeBatch", "removeBatchByPositions", "clear"]) {
  tracked(name, function (original, args) {
    forget(this);
    return original.apply(this, args);
  });
}

const byRowKey = (a, b) => (a.RowKey < b.RowKey ? -1 : a.RowKey > b.RowKey ? 1 : 0);

function partitionRows(collection, pk) {
  if (!collection.__dirsyncRows) collection.__dirsyncRows = new Map();
  let entry = collection.__dirsyncRows.get(pk);
  if (!entry) {
    const rows = collection.find({ PartitionKey: pk }).filter((doc) => doc.PartitionKey === pk).sort(byRowKey);
    entry = { rows, added: [], removed: new Set() };
    collection.__dirsyncRows.set(pk, entry);
  } else if (entry.added.length || entry.removed.size) {
    const { removed } = entry;
    const added = entry.added.filter((doc) => !removed.has(doc)).sort(byRowKey);
    const rows = entry.rows;
    const merged = [];
    let i = 0;
    let j = 0;
    while (i < rows.length || j < added.length) {
      if (i < rows.length && removed.has(rows[i])) {
        i++;
      } else if (j >= added.length || (i < rows.length && byRowKey(rows[i], added[j]) <= 0)) {
        merged.push(rows[i++]);
      } else {
        merged.push(added[j++]);
      }
    }
    entry.rows = merged;
    entry.added = [];
    removed.clear();
  }
  return entry.rows;
}

// What a filter pins when it is a conjunction of terms, one of which is PartitionKey eq '<pk>': the partition, and
// the terms `<property> eq true|false`, which Azurite evaluates as `properties[name] === value` (a cheap test that
// rejects most rows of a sparse query before the interpreter runs; the interpreter still decides).
function pinned(filter) {
  if (typeof filter !== "string" || !filter || filter.includes("\u0000")) return undefined;
  const literals = [];
  const shape = filter.replace(/'(?:[^']|'')*'/g, (text) => `\u0000${literals.push(text.slice(1, -1).replace(/''/g, "'")) - 1}\u0000`);
  if (/\b(or|not)\b/i.test(shape) || shape.includes("'")) return undefined;
  const pins = [...shape.matchAll(/(?:^|[\s(])PartitionKey\s+eq\s+\u0000(\d+)\u0000/g)];
  const mentions = (shape.match(/PartitionKey/g) || []).length;
  if (pins.length !== 1 || mentions !== 1) return undefined;
  const flags = [...shape.matchAll(/(?:^|[\s(])([A-Za-z_][A-Za-z0-9_]*)\s+eq\s+(true|false)(?=[\s)]|$)/gi)]
    .filter((m) => m[1] !== "RowKey")
    .map((m) => [m[1], m[2].toLowerCase() === "true"]);
  return { pk: literals[Number(pins[0][1])], flags };
}

function lowerBound(rows, rowKey) {
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (rows[mid].RowKey < rowKey) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const queryTableEntities = LokiTableMetadataStore.prototype.queryTableEntities;
LokiTableMetadataStore.prototype.queryTableEntities = async function (context, account, table, queryOptions,
                                                                      nextPartitionKey, nextRowKey) {
  const pin = pinned(queryOptions && queryOptions.filter);
  if (pin === undefined) {
    return queryTableEntities.call(this, context, account, table, queryOptions, nextPartitionKey, nextRowKey);
  }
  const collection = this.getEntityCollection(account, table, context);
  const where = QueryGenerator.generateQueryForPersistenceLayer(queryOptions, context);
  const maxResults = this.getMaxResultsOption(queryOptions);
  const afterPk = this.decodeContinuationHeader(nextPartitionKey);
  const fromRk = this.decodeContinuationHeader(nextRowKey);
  const result = [];
  const { pk, flags } = pin;
  if (afterPk === undefined || afterPk <= pk) {
    const rows = partitionRows(collection, pk);
    let i = afterPk === pk && fromRk !== undefined ? lowerBound(rows, fromRk) : 0;
    candidates: for (; i < rows.length && result.length <= maxResults; i++) {
      const properties = rows[i].properties || {};
      for (const [name, value] of flags) {
        if (properties[name] !== value) continue candidates;
      }
      if (where(rows[i])) result.push(rows[i]);
    }
  }
  const response = this.adjustQueryResultforTop(result, maxResults);
  return [result, response.nextPartitionKeyResponse, response.nextRowKeyResponse];
};

// 3. Azure's entity limits, checked on the entity a write would store (the request for an insert or a replace; the
//    stored row overlaid with the request for a merge, as mergeTableEntity builds it) before anything changes.
const { default: StorageError } = require(path.join(azurite, "dist/src/table/errors/StorageError"));
const { default: StorageErrorFactory } = require(path.join(azurite, "dist/src/table/errors/StorageErrorFactory"));

const ODATA_TYPE = "@odata.type";
const SYSTEM_PROPERTIES = new Set(["PartitionKey", "RowKey", "Timestamp"]);
const MAX_PROPERTIES = 252; // 255 with the 3 system properties
const MAX_ENTITY_BYTES = 1024 * 1024;
const MAX_STRING_UNITS = 32 * 1024; // 64 KiB of UTF-16; a JS string's length counts UTF-16 code units
const MAX_BINARY_BYTES = 64 * 1024;

function tooManyProperties(context) {
  return new StorageError(400, "TooManyProperties", "The entity contains more properties than allowed. Each entity " +
    "can include up to 252 properties to store data. Each entity also has 3 system properties.",
    context.contextID || "DefaultID", undefined, context);
}

// A value's size in Microsoft's entity-size formula, by its Edm type (its annotation, else as Azurite types it).
function valueSize(context, value, type) {
  if (type === undefined) {
    type = typeof value === "string" ? "Edm.String" : typeof value === "boolean" ? "Edm.Boolean"
      : Number.isInteger(value) ? "Edm.Int32" : "Edm.Double";
  }
  switch (type) {
    case "Edm.String": {
      const units = String(value).length;
      if (units > MAX_STRING_UNITS) throw StorageErrorFactory.getPropertyValueTooLargeError(context);
      return 4 + 2 * units;
    }
    case "Edm.Binary": {
      const bytes = Buffer.from(String(value), "base64").length;
      if (bytes > MAX_BINARY_BYTES) throw StorageErrorFactory.getPropertyValueTooLargeError(context);
      return 4 + bytes;
    }
    case "Edm.Boolean": return 1;
    case "Edm.Int32": return 4;
    case "Edm.Guid": return 16;
    default: return 8; // Edm.Int64, Edm.Double, Edm.DateTime
  }
}

// 4. The key rules (understanding-the-table-service-data-model, "PartitionKey"/"RowKey" and "Characters disallowed
//    in key fields"): each key is a string of at most 1 KiB (2 bytes per UTF-16 code unit: 512 units), without '/',
//    '\\', '#', '?' or a control character U+0000-U+001F, U+007F-U+009F. Azurite checks them (with the code
//    InvalidInput) on inserts, replaces and merges only; a point read or a delete with such a key answered 404 or
//    204 where Table Storage answers 400. Here every operation naming a key checks it, with Azure's codes:
//    OutOfRangeInput for a disallowed character, KeyValueTooLarge for a key over 1 KiB (TableErrorCode).
const MAX_KEY_BYTES = 1024;
const DISALLOWED_KEY = /[\/\\#?\u0000-\u001F\u007F-\u009F]/;

function checkKey(context, name, value) {
  const text = String(value === undefined || value === null ? "" : value);
  if (2 * text.length > MAX_KEY_BYTES) {
    throw new StorageError(400, "KeyValueTooLarge", `The ${name} is larger than the 1 KiB a key may hold.`,
      context.contextID || "DefaultID", undefined, context);
  }
  if (DISALLOWED_KEY.test(text)) {
    throw new StorageError(400, "OutOfRangeInput", `The ${name} holds a character keys may not hold ('/', '\\', ` +
      "'#', '?' or a control character).", context.contextID || "DefaultID", undefined, context);
  }
}

// 4 + 2 * (len(PartitionKey) + len(RowKey)) + for each property 8 + 2 * len(name) + its value's size; the 4 bytes
// cover Timestamp and the row's metadata, so the system properties are not counted again.
function checkLimits(context, partitionKey, rowKey, properties) {
  let count = 0;
  let size = 4 + 2 * (String(partitionKey).length + String(rowKey).length);
  for (const name in properties) {
    if (!Object.prototype.hasOwnProperty.call(properties, name)) continue;
    if (name.endsWith(ODATA_TYPE) || SYSTEM_PROPERTIES.has(name)) continue;
    const value = properties[name];
    if (value === null || value === undefined) continue; // not stored
    count++;
    size += 8 + 2 * name.length + valueSize(context, value, properties[`${name}${ODATA_TYPE}`]);
  }
  if (count > MAX_PROPERTIES) throw tooManyProperties(context);
  if (size > MAX_ENTITY_BYTES) throw StorageErrorFactory.getEntityTooLarge(context);
}

// The properties mergeTableEntity would store: the row's, overlaid with the request's (a property's type
// annotation goes with the request's value).
function mergedProperties(stored, requested) {
  const merged = { ...stored };
  for (const name in requested) {
    if (!Object.prototype.hasOwnProperty.call(requested, name) || name.endsWith(ODATA_TYPE)) continue;
    merged[name] = requested[name];
    const type = requested[`${name}${ODATA_TYPE}`];
    if (type !== undefined) merged[`${name}${ODATA_TYPE}`] = type;
    else delete merged[`${name}${ODATA_TYPE}`];
  }
  return merged;
}

const insertTableEntity = LokiTableMetadataStore.prototype.insertTableEntity;
LokiTableMetadataStore.prototype.insertTableEntity = async function (context, table, account, entity, ...rest) {
  checkLimits(context, entity.PartitionKey, entity.RowKey, entity.properties || {});
  return insertTableEntity.call(this, context, table, account, entity, ...rest);
};

const updateTableEntity = LokiTableMetadataStore.prototype.updateTableEntity;
LokiTableMetadataStore.prototype.updateTableEntity = async function (context, table, account, entity, ...rest) {
  checkLimits(context, entity.PartitionKey, entity.RowKey, entity.properties || {});
  return updateTableEntity.call(this, context, table, account, entity, ...rest);
};

// A merge that Azurite would refuse anyway (no such row, If-Match not met) is left to refuse it as it does.
const mergeTableEntity = LokiTableMetadataStore.prototype.mergeTableEntity;
LokiTableMetadataStore.prototype.mergeTableEntity = async function (context, table, account, entity, ifMatch,
                                                                    ...rest) {
  const doc = this.getEntityCollection(account, table, context)
    .findOne({ PartitionKey: entity.PartitionKey, RowKey: entity.RowKey });
  const match = this.encodeIfMatch(ifMatch);
  if (doc && (match === undefined || match === "*" || match === this.encodeIfMatch(doc.eTag))) {
    const properties = mergedProperties(doc.properties || {}, entity.properties || {});
    checkLimits(context, entity.PartitionKey, entity.RowKey, properties);
  }
  return mergeTableEntity.call(this, context, table, account, entity, ifMatch, ...rest);
};

const { default: TableHandler } = require(path.join(azurite, "dist/src/table/handlers/TableHandler"));
TableHandler.prototype.validateKey = function (context, key) {
  if (key !== undefined) checkKey(context, "key", key);
};
const getAndCheckKeys = TableHandler.getAndCheckKeys;
TableHandler.getAndCheckKeys = function (partitionKey, rowKey, tableContext, context, ...rest) {
  const keys = getAndCheckKeys.call(this, partitionKey, rowKey, tableContext, context, ...rest);
  checkKey(context, "PartitionKey", keys[0]);
  checkKey(context, "RowKey", keys[1]);
  return keys;
};
