"""A resident's appeal as it arrives, validated (pure: no I/O, no clock).

Two ways in: GeoReport v2 ``POST requests`` (apps and websites, anyone) and the hotline operator's
form in the console. Both become one ``AppealIn``; what is wrong is said per field
(``IntakeError``: GeoReport answers ``[{"code": 400, "description": ...}]``).

Contact details (name, phone, e-mail, device and account ids) are kept to call the resident back
and to count distinct callers; they never leave the service publicly. ``caller_key`` turns the
phone number, e-mail or device id into a keyed hash, so that "9 callers" can be counted without
comparing phone numbers in the open.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from alerts import appeal_text, open311
from alerts.lifecycle import AlertsError
from rules import registry

OTHER: Final = "other"
MAX_TEXT: Final = 4000
MAX_ADDRESS: Final = 200
MAX_URL: Final = 2000
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
# What the API's schema lets through as a phone number: 5 to 20 digits, each followed by at most
# two of space ( ) . - (so that every number the schema accepts is one ``phone`` takes).
PHONE_PATTERN = r"^\+?\(?(?:[0-9][ ().-]{0,2}){5,20}$"
EMAIL_PATTERN = r"^[^@\s\x00]{1,64}@[^@\s\x00]{1,190}\.[A-Za-z]{2,24}$"
URL_PATTERN = r"^https?://[^\s\x00]{3,}$"
ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,100}$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f]{0,100}$"
_EMAIL = re.compile(EMAIL_PATTERN)
_URL = re.compile(URL_PATTERN, re.IGNORECASE)
_ID = re.compile(ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)

Source = Literal["open311", "hotline"]


def categories() -> tuple[str, ...]:
    """What an appeal may be about: the GeoReport services (one per hazard), and ``other``."""
    return (*open311.SERVICES, OTHER)


class IntakeError(AlertsError):
    """An appeal that cannot be taken, with the field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PlaceError(IntakeError):
    """Well formed, but no place of the district: none given, outside it, or an address it does
    not know (GeoReport answers 404, as for an unknown jurisdiction)."""


@dataclass(frozen=True, slots=True)
class Contact:
    first_name: str = ""
    last_name: str = ""
    phone: str = ""
    email: str = ""
    device_id: str = ""
    account_id: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("first_name", self.first_name),
                                  ("last_name", self.last_name), ("phone", self.phone),
                                  ("email", self.email), ("device_id", self.device_id),
                                  ("account_id", self.account_id)) if v}


@dataclass(frozen=True, slots=True)
class AppealIn:
    source: Source
    category: str
    position: tuple[float, float] | None  # [lon, lat]; None: resolve ``address``
    address: str
    description: str
    media_url: str
    contact: Contact


def _text(params: Mapping[str, str], key: str, limit: int) -> str:
    v = params.get(key, "")
    if "\x00" in v:
        raise IntakeError(key, "contains a NUL character")
    v = v.strip()
    if len(v) > limit:
        raise IntakeError(key, f"longer than {limit} characters")
    return v


def _coordinate(params: Mapping[str, str], key: str, lo: float, hi: float) -> float | None:
    raw = params.get(key, "").strip()
    if not raw:
        return None
    try:
        v = float(raw)
    except ValueError:
        raise IntakeError(key, f"{raw[:40]!r} is not a number") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise PlaceError(key, f"{v} is out of range ({lo} to {hi})")
    return v


def phone(raw: str) -> str:
    """A phone number with spaces, dashes, dots and brackets dropped; '' for none."""
    p = re.sub(r"[\s().-]", "", raw.strip())
    if p and not _PHONE.match(p):
        raise IntakeError("phone", "expected 5 to 20 digits, with an optional leading +")
    return p


def _contact(params: Mapping[str, str]) -> Contact:
    email = _text(params, "email", 254)
    if email and not _EMAIL.match(email):
        raise IntakeError("email", "not an e-mail address")
    ids = {}
    for key in ("device_id", "account_id"):
        v = _text(params, key, 100)
        if v and not _ID.match(v):
            raise IntakeError(key, "expected letters, digits and _ . : @ - only")
        ids[key] = v
    names = {}
    for key in ("first_name", "last_name"):
        v = _text(params, key, 100)
        if not _NAME.match(v):
            raise IntakeError(key, "contains control characters")
        names[key] = v
    return Contact(names["first_name"], names["last_name"], phone(params.get("phone", "")),
                   email.lower(), ids["device_id"], ids["account_id"])


def _media(params: Mapping[str, str]) -> str:
    url = _text(params, "media_url", MAX_URL)
    if url and not _URL.match(url):
        raise IntakeError("media_url", "expected an http or https URL")
    return url


def _position(params: Mapping[str, str]) -> tuple[float, float] | None:
    lat = _coordinate(params, "lat", -90, 90)
    lon = _coordinate(params, "long", -180, 180)
    if (lat is None) != (lon is None):
        raise PlaceError("lat" if lat is None else "long", "lat and long come together")
    return None if lat is None or lon is None else (lon, lat)


def from_georeport(params: Mapping[str, str]) -> AppealIn:
    """GeoReport v2 ``POST requests``: ``service_code``; a place as ``lat`` and ``long`` or
    ``address_string`` (``address_id`` names a zone); ``description``, ``media_url`` and the
    contact fields optional. ``api_key`` and ``jurisdiction_id`` are accepted and ignored."""
    code = params.get("service_code", "").strip()
    if not code:
        raise IntakeError("service_code", f"required; one of {', '.join(categories())}")
    if code not in categories():
        raise IntakeError("service_code", f"unknown {code[:64]!r}; expected one of "
                                          f"{', '.join(categories())}")
    position = _position(params)
    address = _text(params, "address_string", MAX_ADDRESS) or _text(params, "address_id", 64)
    if position is None and not address:
        raise PlaceError("lat", "a place is required: lat and long, or address_string")
    return AppealIn("open311", code, position, address,
                    _text(params, "description", MAX_TEXT), _media(params), _contact(params))


def from_hotline(params: Mapping[str, str]) -> AppealIn:
    """The hotline form: ``text`` (required), ``category`` (or ``auto``: from the words), a
    place as ``lat`` and ``long`` (picked on the map) or ``address``, the caller's ``phone``."""
    text = _text(params, "text", MAX_TEXT)
    if not text:
        raise IntakeError("text", "required: what the caller says")
    cat = params.get("category", "auto").strip() or "auto"
    if cat == "auto":
        cat = classify(text)
    elif cat not in categories():
        raise IntakeError("category", f"unknown {cat[:64]!r}; expected auto or one of "
                                      f"{', '.join(categories())}")
    position = _position(params)
    address = _text(params, "address", MAX_ADDRESS)
    if position is None and not address:
        raise PlaceError("address", "a place is required: pick it on the map or type it")
    return AppealIn("hotline", cat, position, address, text, "",
                    Contact(phone=phone(params.get("phone", ""))))


def classify(text: str) -> str:
    """A category from the words alone (the hotline form's ``auto``), ``other`` when none is
    clear: the first hazard (in the registry's order) whose ``appeal_match`` accepts the
    concepts the text names (water with a drain is waterlogging; a fall needs something that
    falls from a building)."""
    found = appeal_text.concepts(text)
    for h in registry.hazards():
        if h.appeal_match is not None and h.report_category and h.appeal_match(found):
            return h.name
    return OTHER


def caller_key(contact: Contact, secret: bytes) -> str | None:
    """A keyed hash of who called: the phone number, else the e-mail, else the device id;
    None when the appeal says nothing about its sender."""
    who = (f"phone:{contact.phone.lstrip('+')}" if contact.phone
           else f"email:{contact.email}" if contact.email
           else f"device:{contact.device_id}" if contact.device_id else None)
    if who is None:
        return None
    return hmac.new(secret, who.encode(), hashlib.sha256).hexdigest()[:24]


def fingerprint(a: AppealIn, position: tuple[float, float], sender: str) -> str:
    """The same submission sent again (a double tap, a retrying app, a flood of copies): same
    category, place (to about 10 m), words and sender."""
    words = appeal_text.normalise(a.description)
    key = f"{a.category}|{position[0]:.4f}|{position[1]:.4f}|{words}|{sender}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]
