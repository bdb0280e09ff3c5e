"""A resident's appeal as it arrives (alerts.appeal_intake) and the public intake's limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.appeal_api import Gate, IntakeLimits, Throttled
from alerts.appeal_intake import (
    AppealIn,
    Contact,
    IntakeError,
    caller_key,
    categories,
    classify,
    fingerprint,
    from_georeport,
    from_hotline,
)

KEYS = ["service_code", "lat", "long", "address_string", "address_id", "description",
        "media_url", "email", "phone", "first_name", "last_name", "device_id", "account_id"]


@given(st.dictionaries(st.sampled_from(KEYS), st.text(max_size=60)))
def test_any_form_is_taken_or_refused_with_a_field_never_anything_else(form: dict[str, str]
                                                                       ) -> None:
    field = None
    try:
        a = from_georeport(form)
    except IntakeError as exc:
        field = exc.field
    if field is not None:
        assert field in KEYS
        return
    assert a.category in categories()
    assert a.position is not None or a.address


def test_a_georeport_request_needs_a_service_and_a_place() -> None:
    with pytest.raises(IntakeError, match="service_code: required"):
        from_georeport({"lat": "31.3", "long": "120.6"})
    with pytest.raises(IntakeError, match="unknown 'noise'"):
        from_georeport({"service_code": "noise", "lat": "31.3", "long": "120.6"})
    with pytest.raises(IntakeError, match="a place is required"):
        from_georeport({"service_code": "waterlogging"})
    with pytest.raises(IntakeError, match="lat and long come together"):
        from_georeport({"service_code": "waterlogging", "lat": "31.3"})
    with pytest.raises(IntakeError, match="out of range"):
        from_georeport({"service_code": "waterlogging", "lat": "91", "long": "120"})
    with pytest.raises(IntakeError, match="media_url"):
        from_georeport({"service_code": "other", "address_string": "乐桥",
                        "media_url": "javascript:alert(1)"})
    a = from_georeport({"service_code": "other", "lat": " 31.3 ", "long": "120.6",
                        "phone": "(138) 0000-0001", "email": "Li@Example.org"})
    assert a.position == (120.6, 31.3)
    assert a.contact == Contact(phone="13800000001", email="li@example.org")


def test_the_hotline_form_takes_the_category_from_the_words() -> None:
    assert from_hotline({"text": "人民路地道积水", "address": "人民路北地道"}).category == \
        "waterlogging"
    assert classify("乐桥路口红绿灯坏了，车堵成一片") == "traffic"
    assert classify("高楼外墙玻璃掉下来了") == "falling_object"
    assert classify("楼上邻居太吵") == "other"
    with pytest.raises(IntakeError, match="text: required"):
        from_hotline({"text": " ", "address": "乐桥"})
    with pytest.raises(IntakeError, match="address: a place is required"):
        from_hotline({"text": "积水"})


def test_one_caller_is_one_key_however_the_number_is_written() -> None:
    k = caller_key(Contact(phone="13800000001"), b"k" * 32)
    assert k == caller_key(Contact(phone="+13800000001"), b"k" * 32)
    assert k != caller_key(Contact(phone="13800000002"), b"k" * 32)
    assert k != caller_key(Contact(phone="13800000001"), b"x" * 32)  # keyed per database
    assert caller_key(Contact(), b"k" * 32) is None


def test_the_same_submission_has_the_same_fingerprint() -> None:
    a = AppealIn("open311", "waterlogging", None, "", "Water  deep", "", Contact())
    b = AppealIn("open311", "waterlogging", None, "", "water deep", "", Contact())
    assert fingerprint(a, (120.6, 31.3), "x") == fingerprint(b, (120.60001, 31.3), "x")
    assert fingerprint(a, (120.6, 31.3), "x") != fingerprint(a, (120.6, 31.3), "y")


def test_the_gate_limits_each_address_and_everyone_together() -> None:
    now = [0.0]
    gate = Gate(IntakeLimits(per_address_per_min=2, overall_per_min=3), clock=lambda: now[0])
    gate.public("a")
    gate.public("a")
    with pytest.raises(Throttled) as one:
        gate.public("a")
    assert one.value.retry_after == 60
    gate.public("b")  # another address is not held back by the first
    with pytest.raises(Throttled):
        gate.public("c")  # but three in a minute is all anyone gets
    now[0] = 61.0
    gate.public("c")
    assert gate.refused == 2
