"""OData query parsing for the fake Graph: $search, $filter, $select, $orderby, $top, $skiptoken.

Directory objects in Microsoft Graph follow these rules (learn.microsoft.com/graph/aad-advanced-queries
and /graph/search-query-parameter); the fake mirrors them closely enough that an app which works here
sends queries Graph accepts.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

ADVANCED_HINT = (
    "Try adding $count=true query parameter and ConsistencyLevel:eventual header. "
    "Refer to https://aka.ms/graph-docs/advanced-queries for more information"
)
MAX_PAGE_SIZE = 999
DEFAULT_PAGE_SIZE = 100


class GraphError(Exception):
    """An error answered in Graph's shape: status, code and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "Request_BadRequest") -> GraphError:
    """A 400 with Graph's directory error code."""
    return GraphError(400, code, message)


def unsupported(message: str) -> GraphError:
    """A 400 Request_UnsupportedQuery."""
    return GraphError(400, "Request_UnsupportedQuery", message)


# --- $top and $skiptoken -------------------------------------------------------------------------


def parse_top(value: str | None) -> int:
    """Page size: 1..999, default 100, like Graph's directory collections."""
    if value is None:
        return DEFAULT_PAGE_SIZE
    try:
        top = int(value.strip())
    except ValueError:
        raise bad_request(f"Invalid page size specified: '{value}'. Must be between 1 and 999 inclusive.")
    if not 1 <= top <= MAX_PAGE_SIZE:
        raise bad_request(f"Invalid page size specified: '{value}'. Must be between 1 and 999 inclusive.")
    return top


def encode_skiptoken(offset: int, last_id: str, issued_at: float = 0.0) -> str:
    """An opaque token remembering where the next page starts (offset, the last id served, when it was issued)."""
    raw = f"{offset}|{int(issued_at)}|{last_id}".encode()
    return "X" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_skiptoken(token: str) -> tuple[int, str, float]:
    """Inverse of encode_skiptoken: (offset, last id, issued at); a foreign or damaged token is a 400."""
    try:
        if not token.startswith("X"):
            raise ValueError
        body = token[1:]
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        offset, _, rest = raw.partition("|")
        issued, _, last_id = rest.partition("|")
        return int(offset), last_id, float(issued)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("Invalid $skiptoken value.")


# --- $select and $orderby ------------------------------------------------------------------------


def parse_select(value: str | None, known: dict[str, str], type_name: str) -> tuple[str, ...] | None:
    """Canonical property names from $select (case-insensitive like Graph); unknown names are a 400."""
    if value is None:
        return None
    names: list[str] = []
    for part in value.split(","):
        name = part.strip()
        if not name:
            raise bad_request("Syntax error: empty property name in $select.", code="BadRequest")
        if name == "*":
            return tuple(dict.fromkeys(known.values()))
        canonical = known.get(name.lower())
        if canonical is None:
            raise bad_request(
                "Parsing OData Select and Expand failed: "
                f"Could not find a property named '{name}' on type '{type_name}'."
            )
        if canonical not in names:
            names.append(canonical)
    return tuple(names)


@dataclass(frozen=True)
class OrderBy:
    prop: str
    descending: bool


def parse_orderby(value: str | None, sortable: dict[str, str]) -> OrderBy | None:
    """One sort clause on a sortable property, optionally asc/desc."""
    if value is None:
        return None
    clauses = [c.strip() for c in value.split(",")]
    if len(clauses) != 1 or not clauses[0]:
        raise unsupported("Sorting not supported for current query.")
    words = clauses[0].split()
    if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
        raise bad_request(f"Syntax error in $orderby: '{value}'.", code="BadRequest")
    prop = sortable.get(words[0].lower())
    if prop is None:
        raise unsupported("Sorting not supported for current query.")
    return OrderBy(prop, len(words) == 2 and words[1].lower() == "desc")


def sort_key(value: Any) -> tuple:
    """Nulls first, strings case-insensitively."""
    if value is None:
        return (0, "")
    if isinstance(value, str):
        return (1, value.casefold())
    return (1, str(value))


# --- $search -------------------------------------------------------------------------------------


def _split_word(word: str) -> list[str]:
    """Split an alphanumeric run on lower->upper case changes and letter/digit boundaries."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(word)):
        prev, ch = word[i - 1], word[i]
        if (prev.islower() and ch.isupper()) or (prev.isdigit() != ch.isdigit()):
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return [p.casefold() for p in parts if p]


_SYMBOLS = re.compile(r"[\W_]+")


def search_tokens(text: str | None, combine: bool = True) -> list[str]:
    """Graph's tokenization: spaces, case changes, digits and symbols split words.

    With combine, words separated only by symbols are also joined (so `helloworld` finds `hello-world`).
    """
    if not text:
        return []
    tokens: list[str] = []
    for chunk in unicodedata.normalize("NFC", text).split():
        runs = [r for r in _SYMBOLS.split(chunk) if r]
        for run in runs:
            tokens.extend(_split_word(run))
        if combine and len(runs) > 1:
            tokens.append("".join(runs).casefold())
    return tokens


@dataclass(frozen=True)
class SearchClause:
    prop: str
    text: str


@dataclass(frozen=True)
class SearchOp:
    op: str  # "AND" | "OR"
    left: "SearchNode"
    right: "SearchNode"


SearchNode = SearchClause | SearchOp


class _SearchParser:
    """Parses `"prop:text" [AND|OR] ("prop:text" ...)`; inside quotes only \\" and \\\\ are escapes."""

    def __init__(self, value: str):
        self.s = value
        self.i = 0

    def error(self, what: str) -> GraphError:
        return unsupported(f"Syntax error in $search at position {self.i}: {what}.")

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def parse(self) -> SearchNode:
        node = self.parse_or()
        self.skip_ws()
        if self.i != len(self.s):
            raise self.error(f"unexpected '{self.s[self.i]}'")
        return node

    def keyword(self, word: str) -> bool:
        self.skip_ws()
        end = self.i + len(word)
        if self.s[self.i:end] == word and (end == len(self.s) or self.s[end] in ' \t"('):
            self.i = end
            return True
        return False

    def parse_or(self) -> SearchNode:
        node = self.parse_and()
        while self.keyword("OR"):
            node = SearchOp("OR", node, self.parse_and())
        return node

    def parse_and(self) -> SearchNode:
        node = self.parse_term()
        while self.keyword("AND"):
            node = SearchOp("AND", node, self.parse_term())
        return node

    def parse_term(self) -> SearchNode:
        self.skip_ws()
        if self.i >= len(self.s):
            raise self.error("a quoted clause is expected")
        if self.s[self.i] == "(":
            self.i += 1
            node = self.parse_or()
            self.skip_ws()
            if self.i >= len(self.s) or self.s[self.i] != ")":
                raise self.error("')' is expected")
            self.i += 1
            return node
        if self.s[self.i] != '"':
            raise self.error("clauses must be enclosed in double quotes")
        return self.parse_clause()

    def parse_clause(self) -> SearchClause:
        self.i += 1
        chars: list[str] = []
        while True:
            if self.i >= len(self.s):
                raise self.error("unterminated quoted clause")
            ch = self.s[self.i]
            if ch == "\\":
                if self.i + 1 >= len(self.s) or self.s[self.i + 1] not in '"\\':
                    raise self.error("only \\\" and \\\\ may be escaped")
                chars.append(self.s[self.i + 1])
                self.i += 2
                continue
            self.i += 1
            if ch == '"':
                break
            chars.append(ch)
        body = "".join(chars)
        prop, sep, text = body.partition(":")
        if not sep or not prop.strip():
            raise self.error("each clause must have the form \"property:text\"")
        if not text.strip():
            raise self.error("empty search text")
        return SearchClause(prop.strip(), text)


def parse_search(value: str, searchable: dict[str, str], resource: str) -> SearchNode:
    """Parse a $search value and resolve its property names (unknown ones are a 400)."""
    node = _SearchParser(value).parse()

    def resolve(n: SearchNode) -> SearchNode:
        if isinstance(n, SearchOp):
            return SearchOp(n.op, resolve(n.left), resolve(n.right))
        prop = searchable.get(n.prop.lower())
        if prop is None:
            raise unsupported(
                f"Unsupported or invalid query filter clause specified for property '{n.prop}' of resource '{resource}'."
            )
        return SearchClause(prop, n.text)

    return resolve(node)


TOKENIZED_PROPERTIES = frozenset({"displayName", "description"})


def compile_search(node: SearchNode, get: Callable[[str, str], Any], tokens_of: Callable[[str, str], list[str]]):
    """A predicate over object ids: tokenized prefix match on displayName/description, startswith elsewhere."""
    if isinstance(node, SearchOp):
        left = compile_search(node.left, get, tokens_of)
        right = compile_search(node.right, get, tokens_of)
        if node.op == "AND":
            return lambda oid: left(oid) and right(oid)
        return lambda oid: left(oid) or right(oid)
    prop = node.prop
    if prop in TOKENIZED_PROPERTIES:
        wanted = search_tokens(node.text, combine=False)
        if not wanted:
            return lambda oid: False

        def match_tokens(oid: str) -> bool:
            have = tokens_of(oid, prop)
            return all(any(t.startswith(w) for t in have) for w in wanted)

        return match_tokens
    prefix = node.text.casefold()

    def match_prefix(oid: str) -> bool:
        value = get(oid, prop)
        return isinstance(value, str) and value.casefold().startswith(prefix)

    return match_prefix


# --- $filter -------------------------------------------------------------------------------------

_FILTER_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_./]*)
    )""",
    re.VERBOSE,
)

_STRING = object()


@dataclass
class FilterInfo:
    """What a parsed $filter uses, to decide whether it needs advanced query parameters."""

    advanced_operator: str | None = None
    by_id: bool = False  # a look-up of objects by id (`id eq …`, `id in (…)`)


class _FilterParser:
    """Recursive descent over a small OData subset: eq ne in startswith endswith not and or ()."""

    def __init__(self, text: str, props: dict[str, str], resource: str):
        self.props = props
        self.resource = resource
        self.info = FilterInfo()
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _FILTER_TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise bad_request(f"Syntax error at position {pos} in '{text}'.", code="BadRequest")
            pos = m.end()
            if m.group("string") is not None:
                self.tokens.append(("string", m.group("string")[1:-1].replace("''", "'")))
            elif m.group("number") is not None:
                self.tokens.append(("number", float(m.group("number"))))
            elif m.group("punct") is not None:
                self.tokens.append((m.group("punct"), None))
            else:
                self.tokens.append(("word", m.group("word")))
        self.text = text
        self.i = 0

    def error(self) -> GraphError:
        return bad_request(f"Syntax error: invalid $filter '{self.text}'.", code="BadRequest")

    def peek_word(self) -> str | None:
        if self.i < len(self.tokens) and self.tokens[self.i][0] == "word":
            return self.tokens[self.i][1].lower()
        return None

    def expect(self, kind: str) -> Any:
        if self.i >= len(self.tokens) or self.tokens[self.i][0] != kind:
            raise self.error()
        value = self.tokens[self.i][1]
        self.i += 1
        return value

    def uses_advanced(self, operator: str) -> None:
        self.info.advanced_operator = self.info.advanced_operator or operator

    def parse(self):
        pred = self.parse_or()
        if self.i != len(self.tokens):
            raise self.error()
        return pred

    def parse_or(self):
        left = self.parse_and()
        while self.peek_word() == "or":
            self.i += 1
            right = self.parse_and()
            left = (lambda a, b: lambda o: a(o) or b(o))(left, right)
        return left

    def parse_and(self):
        left = self.parse_unary()
        while self.peek_word() == "and":
            self.i += 1
            right = self.parse_unary()
            left = (lambda a, b: lambda o: a(o) and b(o))(left, right)
        return left

    def parse_unary(self):
        if self.peek_word() == "not":
            self.i += 1
            self.uses_advanced("not")
            inner = self.parse_unary()
            return lambda o: not inner(o)
        return self.parse_primary()

    def prop(self, name: str) -> str:
        canonical = self.props.get(name.lower())
        if canonical is None:
            raise unsupported(
                f"Unsupported or invalid query filter clause specified for property '{name}' of resource '{self.resource}'."
            )
        return canonical

    def literal(self) -> Any:
        if self.i >= len(self.tokens):
            raise self.error()
        kind, value = self.tokens[self.i]
        self.i += 1
        if kind in ("string", "number"):
            return value
        if kind == "word" and value.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value.lower()]
        raise self.error()

    def parse_primary(self):
        if self.i < len(self.tokens) and self.tokens[self.i][0] == "(":
            self.i += 1
            inner = self.parse_or()
            self.expect(")")
            return inner
        word = self.expect("word")
        lowered = word.lower()
        if lowered in ("startswith", "endswith") and self.i < len(self.tokens) and self.tokens[self.i][0] == "(":
            self.i += 1
            prop = self.prop(self.expect("word"))
            self.expect(",")
            needle = self.expect("string").casefold()
            self.expect(")")
            if lowered == "endswith":
                self.uses_advanced("endsWith")
                return lambda o: isinstance(o(prop), str) and o(prop).casefold().endswith(needle)
            return lambda o: isinstance(o(prop), str) and o(prop).casefold().startswith(needle)
        prop = self.prop(word)
        op = self.peek_word()
        if op not in ("eq", "ne", "in"):
            raise self.error()
        self.i += 1
        self.info.by_id = self.info.by_id or (prop == "id" and op in ("eq", "in"))
        if op == "in":
            self.expect("(")
            values = [_norm(self.literal())]
            while self.i < len(self.tokens) and self.tokens[self.i][0] == ",":
                self.i += 1
                values.append(_norm(self.literal()))
            self.expect(")")
            if len(values) > MAX_IN_VALUES:  # as Graph answers (its docs name no number; 15 is what it enforces)
                raise GraphError(400, "Request_UnsupportedQuery", "Too many child clauses specified in search filter "
                                 f"expression containing 'OR' operators: {len(values)}. Max allowed: {MAX_IN_VALUES}.")
            return lambda o: _norm(o(prop)) in values
        value = _norm(self.literal())
        if op == "ne":
            self.uses_advanced("ne")
            return lambda o: _norm(o(prop)) != value
        return lambda o: _norm(o(prop)) == value


MAX_IN_VALUES = 15


def _norm(value: Any) -> Any:
    """Directory string comparisons are case-insensitive."""
    return value.casefold() if isinstance(value, str) else value


def parse_filter(text: str, props: dict[str, str], resource: str) -> tuple[Callable, FilterInfo]:
    """Compile a $filter into a predicate taking a property getter; also report advanced-only operators."""
    parser = _FilterParser(text, props, resource)
    return parser.parse(), parser.info
