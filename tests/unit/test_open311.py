"""Work orders as Open311 GeoReport v2 service requests: the mapping and the query rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from alerts.open311 import (
    MAX_REQUESTS,
    MAX_SPAN,
    PUBLIC_NOTES,
    SERVICES,
    Open311Error,
    RequestQuery,
    parse_query,
    services,
    states_for,
    status,
    to_request,
)
from alerts.policy import INSTRUCTIONS
from geo.zones import Zone
from rules.levels import HAZARDS
from tests.geometry_catalogue import SQUARE

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ZONE = Zone("up-01", "Renmin Road underpass", "underpass", SQUARE, "st-02")
DEPARTMENTS = {"gusu-drainage": "Gusu District Drainage Department"}

FIELDS = {"service_request_id", "status", "status_notes", "service_name", "service_code",
          "description", "agency_responsible", "service_notice", "requested_datetime",
          "updated_datetime", "expected_datetime", "address", "address_id", "zipcode", "lat",
          "long", "media_url"}


def order(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "WO-000042", "hazard": "waterlogging", "severity": 1, "zone_id": "up-01",
        "department": "gusu-drainage", "state": "accepted",
        "created": datetime(2026, 11, 23, 8, 15, 0, 250_000, tzinfo=UTC),
        "resolve_by": datetime(2026, 11, 23, 9, 15, 0, 250_000, tzinfo=UTC),
        "title": "Standing water 31.5 cm at Renmin Road underpass",
        "last_reason": "accept by drainage-1",
        "last_change": datetime(2026, 11, 23, 8, 20, 0, tzinfo=UTC),
    }
    return {**base, **changes}


def test_one_service_per_hazard() -> None:
    got = services()
    assert [s["service_code"] for s in got] == list(HAZARDS)
    for s in got:
        assert set(s) == {"service_code", "service_name", "description", "metadata", "type",
                          "keywords", "group"}
        assert s["metadata"] is False and s["type"] == "realtime"
        assert s["service_name"] and s["description"] and s["group"]
        assert isinstance(s["keywords"], str) and " ," not in s["keywords"]


@pytest.mark.parametrize(("state", "expected"), [
    ("open", "open"), ("assigned", "open"), ("accepted", "open"),
    ("resolved", "open"),  # still to be verified: it may be refused or reopened
    ("closed", "closed"),
])
def test_only_a_closed_order_is_closed(state: str, expected: str) -> None:
    assert status(state) == expected
    assert to_request(order(state=state), ZONE, DEPARTMENTS)["status"] == expected


def test_states_for_status_filters() -> None:
    assert states_for(()) is None
    assert states_for(("open", "closed")) is None
    assert states_for(("closed",)) == ("closed",)
    assert states_for(("closed", "closed")) == ("closed",)
    assert states_for(("open",)) == ("open", "assigned", "accepted", "resolved")


def test_a_work_order_as_a_service_request() -> None:
    got = to_request(order(), ZONE, DEPARTMENTS)
    assert set(got) == FIELDS
    rp = SQUARE.representative_point()
    assert got == {
        "service_request_id": "WO-000042",
        "status": "open",
        "status_notes": "a team is working on it",
        "service_name": "Waterlogging",
        "service_code": "waterlogging",
        "description": "Standing water 31.5 cm at Renmin Road underpass",
        "agency_responsible": "Gusu District Drainage Department",
        "service_notice": INSTRUCTIONS["waterlogging"],
        "requested_datetime": "2026-11-23T08:15:00Z",
        "updated_datetime": "2026-11-23T08:20:00Z",
        "expected_datetime": "2026-11-23T09:15:00Z",
        "address": "Renmin Road underpass",
        "address_id": "up-01",
        "zipcode": None,
        "lat": round(rp.y, 6),
        "long": round(rp.x, 6),
        "media_url": None,
    }
    assert SQUARE.contains(rp)


def test_fallbacks_unknown_department_zone_and_history() -> None:
    got = to_request(order(department="office-st-09", last_reason=None, last_change=None,
                           hazard="falling_object", zone_id="gone"), None, DEPARTMENTS)
    assert got["agency_responsible"] == "office-st-09"  # no name configured: the id
    assert got["status_notes"] == PUBLIC_NOTES["accepted"]
    assert got["updated_datetime"] == got["requested_datetime"]
    assert got["address"] is None and got["lat"] is None and got["long"] is None
    assert got["address_id"] == "gone"
    assert got["service_name"] == SERVICES["falling_object"].name


def test_a_public_request_names_no_team_worker_or_internal_note() -> None:
    internal = ("check: on_site: water over the kerb, grid-07 at [120.6213, 31.3117]; "
                "escalated from gusu-drainage to office-st-02, team street-st-02-1")
    for state in PUBLIC_NOTES:
        got = to_request(order(state=state, last_reason=internal, team_id="drainage-1"), ZONE,
                         DEPARTMENTS)
        text = json.dumps(got)
        for secret in ("grid-07", "drainage-1", "street-st-02-1", "120.6213", "kerb"):
            assert secret not in text, (state, secret)
        assert got["status_notes"] == PUBLIC_NOTES[state]


def test_times_as_strings_from_the_store_readers() -> None:
    got = to_request(order(created="2026-11-23T08:15:00.250Z",
                           resolve_by="2026-11-23T16:15:00+08:00"), ZONE, {})
    assert got["requested_datetime"] == "2026-11-23T08:15:00Z"
    assert got["expected_datetime"] == "2026-11-23T08:15:00Z"


# --- queries ----------------------------------------------------------------------------------


def test_default_query_is_the_last_90_days_up_to_1000() -> None:
    assert parse_query({}, NOW) == RequestQuery(start=NOW - MAX_SPAN, limit=MAX_REQUESTS)
    assert (MAX_SPAN.days, MAX_REQUESTS) == (90, 1000)  # the spec's defaults


def test_comma_lists_and_dates() -> None:
    q = parse_query({"service_code": "waterlogging,traffic", "status": "open",
                     "start_date": "2026-11-01T00:00:00Z",
                     "end_date": "2026-11-23T08:00:00+08:00", "jurisdiction_id": "gusu"}, NOW)
    assert q.service_codes == ("waterlogging", "traffic")
    assert q.statuses == ("open",)
    assert q.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert q.end == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def test_one_date_gives_a_90_day_window_from_it() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_query({"start_date": "2026-01-01T00:00:00Z"}, NOW).end == start + MAX_SPAN
    q = parse_query({"end_date": "2026-01-01T00:00:00Z"}, NOW)
    assert (q.start, q.end) == (start - MAX_SPAN, start)


def test_ids_are_a_comma_list() -> None:
    assert parse_query({"service_request_id": "WO-000001,WO-000002"}, NOW).ids == (
        "WO-000001", "WO-000002")


@pytest.mark.parametrize(("params", "words"), [
    ({"status": "pending"}, "status"),
    ({"status": "open,"}, "empty"),
    ({"service_code": "potholes"}, "service_code"),
    ({"start_date": "yesterday"}, "w3c"),
    ({"start_date": "2026-11-01T00:00:00"}, "timezone"),
    ({"start_date": "2026-11-02T00:00:00Z", "end_date": "2026-11-01T00:00:00Z"}, "before"),
    ({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-11-01T00:00:00Z"}, "90 days"),
    ({"service_request_id": "WO 1"}, "service_request_id"),
    ({"service_request_id": ",".join(f"WO-{i}" for i in range(1001))}, "at most"),
])
def test_bad_queries_are_400_in_georeport_form(params: dict[str, str], words: str) -> None:
    with pytest.raises(Open311Error) as err:
        parse_query(params, NOW)
    assert err.value.code == 400
    (body,) = err.value.body()
    assert body["code"] == 400 and words in body["description"]
