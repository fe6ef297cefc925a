"""A subscription's ``attributeMapping``: which directory property fills which portal field, checked, selected, read.

The mapping is a plain value: parsed from the API (every problem a 400 naming its key), kept on the subscription,
turned into the Graph ``$select`` that reads exactly what it needs, and applied to a DirectoryUser's properties."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

from .errors import InvalidInput

# Portal field (API name) -> the User attribute it fills.
PORTAL_FIELDS: dict[str, str] = {
    "email": "email", "phone": "phone", "displayName": "display_name", "givenName": "given_name",
    "surname": "surname", "department": "department", "jobTitle": "job_title", "employeeId": "employee_id",
    "officeLocation": "office_location",
}
DEFAULT_SOURCES: dict[str, str] = {"email": "mail", "displayName": "displayName", "givenName": "givenName",
                                   "surname": "surname"}
MAX_CUSTOM = 10
MAX_CUSTOM_NAME = 64
# Graph user properties that hold a string (https://learn.microsoft.com/graph/api/resources/user); otherMails and
# businessPhones are collections of strings, of which the first is read.
USER_PROPERTIES = frozenset({
    "mail", "userPrincipalName", "otherMails", "mobilePhone", "businessPhones", "faxNumber", "department",
    "jobTitle", "employeeId", "employeeType", "employeeHireDate", "officeLocation", "companyName", "city", "country",
    "state", "postalCode", "streetAddress", "usageLocation", "preferredLanguage", "displayName", "givenName",
    "surname", "mailNickname", "userType", "onPremisesSamAccountName", "onPremisesUserPrincipalName",
    "onPremisesDomainName", "onPremisesDistinguishedName", "onPremisesImmutableId", "onPremisesSecurityIdentifier",
    "ageGroup", "consentProvidedForMinor", "legalAgeGroupClassification", "creationType", "externalUserState",
})
LIST_PROPERTIES = frozenset({"otherMails", "businessPhones"})
ORG_DATA = ("employeeOrgData/costCenter", "employeeOrgData/division")
ON_PREMISES_EXTENSIONS = tuple(f"onPremisesExtensionAttributes/extensionAttribute{i}" for i in range(1, 16))
# A directory extension property: extension_<the owning app's appId without hyphens>_<name>
# (https://learn.microsoft.com/graph/extensibility-overview#directory-microsoft-entra-id-extensions).
EXTENSION = re.compile(r"extension_[0-9a-fA-F]{32}_[A-Za-z0-9_]{1,120}")
_CUSTOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_source(source: Any) -> bool:
    """Can ``source`` be read from a Graph user?"""
    return isinstance(source, str) and (source in USER_PROPERTIES or source in ORG_DATA
                                        or source in ON_PREMISES_EXTENSIONS or EXTENSION.fullmatch(source) is not None)


@dataclass(frozen=True)
class AttributeMapping:
    """Portal field -> source for the fields mapped (defaults included), and custom attribute name -> source."""

    fields: tuple[tuple[str, str], ...] = tuple(sorted(DEFAULT_SOURCES.items()))
    custom: tuple[tuple[str, str], ...] = ()

    @cached_property
    def _sources(self) -> dict[str, str]:
        return dict(self.fields)

    def source(self, portal_field: str) -> str | None:
        """The directory property that fills ``portal_field``; None when it is not mapped."""
        return self._sources.get(portal_field)

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_MAPPING

    def to_api(self) -> dict[str, Any]:
        return {**dict(self.fields), "custom": dict(self.custom)}

    def tag(self) -> str:
        """Changes when the mapping does; '' for the default (what delta state kept before mappings existed)."""
        if self.is_default:
            return ""
        return hashlib.sha256(json.dumps(self.to_api(), sort_keys=True).encode()).hexdigest()[:16]

    def graph_select(self) -> tuple[str, ...]:
        """The Graph properties to ``$select`` for this mapping beyond the sync's own (names, ids, state): the
        top-level property of each source, and usageLocation to read a national phone number with."""
        wanted = {s.split("/", 1)[0] for _, s in (*self.fields, *self.custom)}
        if self.source("phone"):
            wanted.add("usageLocation")
        return tuple(sorted(wanted))


DEFAULT_MAPPING = AttributeMapping()


def parse_mapping(body: Any) -> AttributeMapping:
    """The mapping an API body asks for (keys left out keep their default), or 400 ``invalid_attribute_mapping``
    naming the first bad key."""
    def bad(key: str, why: str) -> InvalidInput:
        return InvalidInput(f"attributeMapping.{key}: {why}", code="invalid_attribute_mapping")

    if not isinstance(body, dict):
        raise InvalidInput("attributeMapping must be an object of portal field to directory property",
                           code="invalid_attribute_mapping")
    chosen = dict(DEFAULT_SOURCES)
    custom: dict[str, str] = {}
    for key, value in body.items():
        if key == "custom":
            if not isinstance(value, dict):
                raise bad("custom", "must be an object of attribute name to directory property")
            if len(value) > MAX_CUSTOM:
                raise bad("custom", f"at most {MAX_CUSTOM} custom attributes")
            for name, source in value.items():
                if not isinstance(name, str) or not name.strip():
                    raise bad("custom", "a custom attribute needs a non-empty name")
                if len(name) > MAX_CUSTOM_NAME or not _CUSTOM_NAME.fullmatch(name):
                    raise bad(f"custom.{name[:MAX_CUSTOM_NAME]}", f"a name is 1 to {MAX_CUSTOM_NAME} letters, digits, "
                                                                  "'_', '.' or '-', starting with a letter or digit")
                if not isinstance(source, str):
                    raise bad(f"custom.{name}", "must be a directory property name (a string)")
                if not is_source(source):
                    raise bad(f"custom.{name}", f"{source[:200]!r} is not a directory property the sync can read")
                custom[name] = source
            continue
        if key not in PORTAL_FIELDS:
            raise bad(str(key)[:100], f"unknown portal field; one of {', '.join(PORTAL_FIELDS)}, custom")
        if not isinstance(value, str):
            raise bad(key, "must be a directory property name (a string)")
        if not is_source(value):
            raise bad(key, f"{value[:200]!r} is not a directory property the sync can read")
        chosen[key] = value
    return AttributeMapping(tuple(sorted(chosen.items())), tuple(sorted(custom.items())))


def mapping_from_json(text: str | None) -> AttributeMapping:
    """A stored mapping (its API form); the default when none was stored."""
    if not text:
        return DEFAULT_MAPPING
    data = json.loads(text)
    custom = data.pop("custom", {}) or {}
    return AttributeMapping(tuple(sorted(data.items())), tuple(sorted(custom.items())))


def mapping_to_json(mapping: AttributeMapping) -> str | None:
    return None if mapping.is_default else json.dumps(mapping.to_api(), sort_keys=True, separators=(",", ":"))


def flatten(item: Mapping[str, Any]) -> dict[str, str]:
    """A Graph user's JSON as ``{source: string value}``: strings as they are, the first non-empty string of a
    collection, and the string members of complex properties under ``parent/member``."""
    out: dict[str, str] = {}
    for name, value in item.items():
        if name.startswith("@") or value is None:
            continue
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, list):
            first = next((v for v in value if isinstance(v, str) and v.strip()), None)
            if first is not None:
                out[name] = first
        elif isinstance(value, dict):
            for member, inner in value.items():
                if isinstance(inner, str) and not member.startswith("@"):
                    out[f"{name}/{member}"] = inner
    return out


def clean(value: Any) -> str | None:
    """A mapped value as stored: trimmed, and nothing when empty (so '' and a missing property compare equal)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text or None
