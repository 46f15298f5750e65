"""Brand grouping of a page of providers: a brand once, its portals beneath, each told apart."""

from __future__ import annotations

from syncsvc.db.models.connections import Tenant
from syncsvc.directory.picker_results import Status, group_page


def _tenant(name: str, display: str, **extra: str | None) -> Tenant:
    return Tenant(id=f"id-{name}", name=name, display_name=display, **extra)


def test_a_brands_portals_are_grouped_where_the_brand_first_appears() -> None:
    page = [
        _tenant("a", "Acme Clinic", city="Salina", state="KS"),
        _tenant("m", "Gulf", directory="d", portal_name="MyChart", city="Gulfport", state="MS"),
        _tenant("x", "Other", directory="d", portal_name="Other Portal"),
        _tenant("k", "Gulf", directory="d", portal_name="Kids", city="Gulfport", state="MS"),
        _tenant("p", "Pointe", directory="d", brand_name="Gulf", portal_name="MyChart"),
    ]
    groups = group_page(page, {"id-k": Status("Connected", "ok")})
    assert [(g.brand, [c.tenant for c in g.providers]) for g in groups] == [
        (None, ["a"]),
        ("Gulf", ["m", "k", "p"]),
        (None, ["x"]),
    ]
    acme, gulf, other = groups
    assert (acme.providers[0].label, acme.providers[0].detail) == ("Acme Clinic", "Salina, KS")
    assert [c.label for c in gulf.providers] == ["MyChart", "Kids", "Pointe"]
    # What the label says is not said again beneath it; the affiliate shows the portal it uses.
    assert [c.detail for c in gulf.providers] == ["Gulfport, MS", "Gulfport, MS", "MyChart"]
    assert gulf.providers[1].status == Status("Connected", "ok")
    assert other.providers[0].detail == "Other Portal"


def test_portals_that_read_alike_are_told_apart_by_place_or_number() -> None:
    page = [
        _tenant("n", "Gulf", directory="d", portal_name="Portal", city="Biloxi", state="MS"),
        _tenant("s", "Gulf", directory="d", portal_name="Portal", city="Mobile", state="AL"),
        _tenant("t", "Gulf", directory="d", portal_name="Portal", city="Mobile", state="AL"),
    ]
    [group] = group_page(page)
    assert [c.label for c in group.providers] == ["Biloxi, MS", "Gulf (2)", "Gulf (3)"]
    # A provider registered by hand (no directory) is never grouped, whatever its names.
    alone = group_page([_tenant("h", "Gulf", portal_name="Portal"), *page[:1]])
    assert [g.brand for g in alone] == [None, None]
