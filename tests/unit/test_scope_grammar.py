"""Reading granted scopes: v1/v2, wildcards, query qualifiers, malformed scopes, per-type parts."""

from __future__ import annotations

import pytest

from syncsvc.smart.scope_grammar import (
    TypeGrant,
    parse,
    part_of_text,
    part_text,
    part_within,
    read_grant,
    token_matches,
    type_grants,
)

OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"category={OBS}|laboratory"
VITALS = f"category={OBS}|vital-signs"
TYPES = ["Patient", "Observation", "Condition"]


def test_a_qualified_v2_scope_keeps_its_query() -> None:
    scope = parse(f"patient/Observation.rs?{LAB}")
    assert scope is not None
    assert scope.syntax == "v2"
    assert scope.letters == frozenset("rs")
    assert scope.query == (("category", f"{OBS}|laboratory"),)
    assert scope.qualified


@pytest.mark.parametrize(
    ("scope", "letters"),
    [
        ("patient/Observation.read", "rs"),
        ("patient/Observation.write", "cud"),
        ("patient/Observation.*", "cruds"),
        ("user/Observation.cruds", "cruds"),
        ("patient/Observation.s", "s"),
    ],
)
def test_v1_permissions_mean_their_v2_letters(scope: str, letters: str) -> None:
    parsed = parse(scope)
    assert parsed is not None
    assert parsed.letters == frozenset(letters)


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.dus",  # out of order
        "patient/Observation.rrs",  # repeated
        "patient/Observation.rx",  # unknown letter
        "patient/Observation.",  # nothing
        "patient/Observation.rs?",  # an empty query
        "patient/Observation.rs?category",  # a parameter without a value
        "patient/Observation.rs?category=",
        "patient/Observation.read?category=laboratory",  # v1 has no qualifiers
        "patient/Obs-ervation.rs",
    ],
)
def test_malformed_scopes_are_kept_aside_and_grant_nothing(scope: str) -> None:
    assert parse(scope) is None
    grant = read_grant(["openid", scope])
    assert grant.malformed == (scope,)
    assert grant.others == ("openid",)
    assert type_grants([scope], TYPES) == {}


def test_percent_encoded_qualifiers_read_as_plain_ones() -> None:
    encoded = parse(f"patient/Observation.rs?category={OBS.replace(':', '%3A')}%7Claboratory")
    plain = parse(f"patient/Observation.rs?{LAB}")
    assert encoded is not None
    assert plain is not None
    assert encoded.key() == plain.key()


def test_duplicates_however_spelled_count_once() -> None:
    grant = read_grant(
        [f"patient/Observation.rs?{LAB}", f"patient/Observation.rs?{LAB}", "patient/Goal.rs"] * 2
    )
    assert len(grant.scopes) == 2


def test_qualified_scopes_of_one_type_add_up() -> None:
    grants = type_grants(
        [f"patient/Observation.rs?{LAB}", f"patient/Observation.rs?{VITALS}"], TYPES
    )
    assert grants == {
        "Observation": TypeGrant(
            "Observation",
            ((("category", f"{OBS}|laboratory"),), (("category", f"{OBS}|vital-signs"),)),
        )
    }


def test_an_unqualified_scope_wins_over_qualified_ones() -> None:
    for order in (
        [f"patient/Observation.rs?{LAB}", "patient/Observation.read"],
        ["patient/Observation.rs", f"patient/Observation.rs?{LAB}"],
    ):
        assert type_grants(order, TYPES)["Observation"].whole


def test_wildcards_v1_and_v2_grant_every_type_whole() -> None:
    for wildcard in ("patient/*.read", "patient/*.rs", "user/*.cruds"):
        grants = type_grants([wildcard, f"patient/Observation.rs?{LAB}"], TYPES)
        assert list(grants) == TYPES
        assert all(g.whole for g in grants.values())


def test_a_qualified_wildcard_grants_its_part_of_every_type() -> None:
    grants = type_grants([f"patient/*.rs?{LAB}"], ["Observation", "Condition"])
    assert grants["Condition"].part_texts() == [LAB]


def test_v1_and_v2_mix() -> None:
    grants = type_grants(["patient/Condition.read", f"patient/Observation.rs?{LAB}"], TYPES)
    assert grants["Condition"].whole
    assert grants["Observation"].part_texts() == [LAB]


def test_system_scopes_and_read_only_scopes_do_not_let_syncsvc_search() -> None:
    assert type_grants(["system/Observation.rs", "patient/Condition.r"], TYPES) == {}
    assert type_grants(["patient/Patient.r"], TYPES) == {"Patient": TypeGrant("Patient")}


def test_a_narrower_part_adds_nothing_to_a_wider_one() -> None:
    both = f"category={OBS}|laboratory,{OBS}|vital-signs"
    grants = type_grants([f"patient/Observation.rs?{both}", f"patient/Observation.rs?{LAB}"], TYPES)
    assert grants["Observation"].part_texts() == [both]


def test_parts_within_and_tokens() -> None:
    lab = part_of_text(LAB)
    assert lab is not None
    assert part_within(lab, lab)
    assert not part_within(lab, part_of_text(VITALS) or ())
    assert part_within(lab, part_of_text("category=laboratory") or ())  # a bare code: any system
    assert not part_within(part_of_text("category=laboratory") or (), lab)
    assert part_within((("category", f"{OBS}|laboratory"), ("status", "final")), lab)
    assert part_text(lab) == LAB
    assert token_matches("laboratory", f"{OBS}|laboratory")
    assert not token_matches("other|laboratory", f"{OBS}|laboratory")


def test_type_grants_compare_by_parts() -> None:
    whole = TypeGrant("Observation")
    lab = TypeGrant("Observation", (part_of_text(LAB) or (),))
    both = TypeGrant("Observation", (part_of_text(LAB) or (), part_of_text(VITALS) or ()))
    assert whole.covers(both)
    assert both.covers(lab)
    assert not lab.covers(both)
    assert both.missing_from(lab) == (part_of_text(VITALS),)
    assert whole.missing_from(lab) is None
    assert lab.missing_from(whole) == ()
