"""Residents' words made comparable (alerts.appeal_text): properties and the cases that matter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from alerts import appeal_text as at

VOCAB = at.Vocabulary.of({"人民路": "road:renmin-road", "renmin road": "road:renmin-road"})
texts = st.text(max_size=80)


@given(texts)
def test_normalise_is_idempotent_and_drops_control_characters(t: str) -> None:
    n = at.normalise(t)
    assert at.normalise(n) == n
    assert not any(ord(c) < 32 for c in n)


@given(texts, texts)
def test_similarity_is_symmetric_and_between_0_and_1(a: str, b: str) -> None:
    s = at.similarity(a, b, VOCAB)
    assert 0.0 <= s <= 1.0
    assert abs(s - at.similarity(b, a, VOCAB)) < 1e-9


@given(texts)
def test_a_text_is_like_itself_when_it_says_anything(t: str) -> None:
    if at.features(t, VOCAB):
        assert at.similarity(t, t, VOCAB) > 0.999


def test_full_width_and_case_do_not_matter() -> None:
    assert at.similarity("ＷＡＴＥＲ ｕｎｄｅｒｐａｓｓ", "water underpass") > 0.999


def test_chinese_and_english_about_one_flood_meet_through_concepts_and_places() -> None:
    zh = "人民路地道积水很深，车子过不去"
    en = "Renmin Road underpass: water 31 cm"
    noise = "人民路楼上邻居放音乐太吵"
    assert at.similarity(zh, en, VOCAB) > 0.6
    assert at.similarity(zh, en, VOCAB) > at.similarity(noise, en, VOCAB) + 0.25
    assert {"water", "underpass"} <= at.concepts(zh, VOCAB)
    assert at.places(zh, VOCAB) == ("road:renmin-road",)


def test_english_stems_meet() -> None:
    assert at.concepts("Street flooded, drain clogged, car stalled") == {
        "street", "water", "drain", "blocked", "stuck", "vehicle"}


def test_nothing_said_is_like_nothing() -> None:
    assert at.features("") == {}
    assert at.similarity("", "water") == 0.0
    assert at.best_similarity("water", []) == 0.0
