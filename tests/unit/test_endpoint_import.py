"""Endpoint bundle import: SMART brands, both Oracle Health shapes, skips, naming and bad input."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from syncsvc.directory.bundle_index import Address
from syncsvc.directory.endpoint_import import (
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_JSON_VALUES,
    ImportedEndpoint,
    ImportReport,
    named,
    parse_endpoint_bundle,
    read_endpoint_file,
)
from syncsvc.errors import ConfigError

DATA = Path(__file__).resolve().parent.parent / "data" / "endpoints"
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

LAKESIDE_R4 = "https://fhir.lakeside-health.example.org/api/FHIR/R4"
LAKESIDE_KIDS = "https://fhir.lakeside-health.example.org/kids/api/FHIR/R4"
SUMMIT_R4 = "https://epicproxy.et0917.epichosted.com/APIProxyPRD/api/FHIR/R4"
PRAIRIE = "https://fhir-myrecord.cerner.com/r4/3f6b2c1e-8d4a-4b7e-9a10-2c5d7e9f0a11"


def load(name: str) -> Any:
    return orjson.loads((DATA / name).read_bytes())


def by_base(report: ImportReport) -> dict[str, ImportedEndpoint]:
    return {e.fhir_base: e for e in report.endpoints}


def skipped_mentioning(report: ImportReport, text: str) -> list[str]:
    return [s for s in report.skipped if text in s]


def endpoint(id_: str, address: str | None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Endpoint", "id": id_, "status": "active"}
    if address is not None:
        resource["address"] = address
    resource.update(extra)
    return resource


def organization(id_: str, name: str, *endpoints: str, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Organization", "id": id_, "name": name}
    resource["endpoint"] = [{"reference": f"Endpoint/{e}"} for e in endpoints]
    resource.update(extra)
    return resource


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


# --- SMART User-access Brands -------------------------------------------------------------


def test_brands_bundle_yields_one_endpoint_per_base_in_bundle_order() -> None:
    report = read_endpoint_file(DATA / "brands.json")

    assert report.format == "brands"
    assert [e.fhir_base for e in report.endpoints] == [LAKESIDE_R4, LAKESIDE_KIDS, SUMMIT_R4]
    first = report.endpoints[0]
    assert first.name == "lakeside-health"
    assert first.display_name == "Lakeside Health"
    assert first.source_id == "lakeside-r4"
    assert first.vendor == "generic"


def test_brand_with_two_endpoints_gets_the_portal_of_each() -> None:
    endpoints = by_base(read_endpoint_file(DATA / "brands.json"))

    assert endpoints[LAKESIDE_R4].portal_url == "https://mychart.lakeside-health.example.org"
    assert endpoints[LAKESIDE_KIDS].portal_url == "https://kids.lakeside-health.example.org"
    assert endpoints[LAKESIDE_KIDS].display_name == "Lakeside Health"
    assert endpoints[LAKESIDE_KIDS].name.startswith("lakeside-health-")
    assert endpoints[LAKESIDE_KIDS].name != endpoints[LAKESIDE_R4].name


def test_endpoint_shared_by_two_brands_appears_once_with_the_second_as_alias() -> None:
    report = read_endpoint_file(DATA / "brands.json")
    lakeside = by_base(report)[LAKESIDE_R4]

    assert [e.fhir_base for e in report.endpoints].count(LAKESIDE_R4) == 1
    assert lakeside.display_name == "Lakeside Health"
    assert "Harbor Clinic" in lakeside.aliases
    # The brand's own former name comes first, then later brands, then affiliates.
    assert lakeside.aliases[0] == "Lakeside Medical Group"
    # The same Endpoint resource named twice is not a duplicate to report.
    assert not skipped_mentioning(report, "Endpoint/lakeside-r4")


def test_affiliate_brand_without_endpoints_becomes_an_alias_of_its_parent() -> None:
    endpoints = by_base(read_endpoint_file(DATA / "brands.json"))

    for base in (LAKESIDE_R4, LAKESIDE_KIDS):
        assert "Northgate Family Practice" in endpoints[base].aliases
        assert "Northgate Pediatrics" in endpoints[base].aliases
    assert "Harbor Clinic" not in endpoints[LAKESIDE_KIDS].aliases


def test_epic_host_is_recognised_and_dstu2_endpoint_is_skipped() -> None:
    report = read_endpoint_file(DATA / "brands.json")

    assert by_base(report)[SUMMIT_R4].vendor == "epic"
    assert report.skipped == (
        "Skipped Endpoint/summit-dstu2 (Summit Orthopedics): it serves FHIR 1.0.2, not R4 (4.0.x).",
    )


def test_each_problem_entry_is_skipped_with_its_reason() -> None:
    report = read_endpoint_file(DATA / "brands_problems.json", allow_loopback=True)

    assert [e.name for e in report.endpoints] == ["riverbend-hospital", "loopback-dev-clinic"]
    reasons = {
        "Endpoint/riverbend-off": "status is 'off'",
        "Endpoint/riverbend-msg": "not FHIR REST",
        "Endpoint/riverbend-noaddr": "has no address",
        "Endpoint/riverbend-http": "must use https",
        "Endpoint/riverbend-query": "not a usable FHIR base",
        "Endpoint/riverbend-r4-copy": "duplicates Endpoint/riverbend-r4",
        "Endpoint/riverbend-missing": "not in the bundle",
        "'Old Town Clinic'": "marked inactive",
        "a Location": "neither an Organization nor an Endpoint",
        "'Empty Brand'": "lists no endpoint",
        "Endpoint/stray-r4": "no brand or organization",
    }
    for subject, reason in reasons.items():
        found = skipped_mentioning(report, subject)
        assert len(found) == 1, subject
        assert reason in found[0], found[0]
    assert len(report.skipped) == len(reasons)
    # Every skip is one plain sentence.
    assert all(s.startswith("Skipped ") and s.endswith(".") for s in report.skipped)


def test_plain_http_is_accepted_on_loopback_only() -> None:
    endpoints = by_base(read_endpoint_file(DATA / "brands_problems.json", allow_loopback=True))

    assert endpoints["http://127.0.0.1:8081/fhir"].display_name == "Loopback Dev Clinic"
    assert not any(base.startswith("http://fhir.") for base in endpoints)


def test_an_endpoint_on_this_machine_is_skipped_unless_loopback_is_allowed() -> None:
    report = read_endpoint_file(DATA / "brands_problems.json")

    assert "http://127.0.0.1:8081/fhir" not in by_base(report)
    [found] = skipped_mentioning(report, "Endpoint/dev-local")
    assert "is on this machine (loopback; --allow-loopback)" in found


def test_inactive_brand_does_not_import_its_endpoint() -> None:
    report = read_endpoint_file(DATA / "brands_problems.json")

    assert "https://fhir.oldtownclinic.example.org/r4" not in by_base(report)
    assert not skipped_mentioning(report, "Endpoint/old-town-r4")


def test_ballot_era_endpoint_pointing_at_its_organization_is_read() -> None:
    document = bundle(
        endpoint(
            "labs-r4",
            "https://fhir.examplelabs.example.org/r4",
            managingOrganization={"reference": "Organization/labs"},
            extension=[
                {
                    "url": "http://fhir.org/argonaut/StructureDefinition/endpoint-fhir-version",
                    "valueCode": "4.0.1",
                }
            ],
        ),
        {
            "resourceType": "Organization",
            "id": "labs",
            "name": "ExampleLabs",
            "alias": ["ExampleLabs Alaska"],
            "extension": [
                {
                    "url": "http://fhir.org/argonaut/StructureDefinition/patient-access-url",
                    "valueUrl": "https://patient.examplelabs.example.org",
                }
            ],
        },
    )

    report = parse_endpoint_bundle(document)

    assert report.format == "brands"
    (only,) = report.endpoints
    assert only.display_name == "ExampleLabs"
    assert only.aliases == ("ExampleLabs Alaska",)
    assert only.portal_url == "https://patient.examplelabs.example.org"
    assert report.skipped == ()


def test_endpoint_without_a_named_brand_falls_back_to_its_own_name() -> None:
    document = bundle(
        {"resourceType": "Organization", "id": "o", "endpoint": [{"reference": "Endpoint/e"}]},
        endpoint("e", "https://fhir.example.org/r4", name="Example FHIR R4"),
    )

    (only,) = parse_endpoint_bundle(document).endpoints

    assert only.display_name == "Example FHIR R4"
    assert only.name == "example-fhir-r4"


# --- Oracle Health ------------------------------------------------------------------------


def test_oracle_current_shape_pairs_organizations_with_their_endpoints() -> None:
    report = read_endpoint_file(DATA / "oracle_current.json")

    assert report.format == "oracle-current"
    assert [e.name for e in report.endpoints] == [
        "prairie-view-regional-medical-center",
        "bayou-family-medicine-llc",
        "cedar-ridge-podiatry",
    ]
    assert all(e.vendor == "cerner" for e in report.endpoints)
    assert all(not e.fhir_base.endswith("/") for e in report.endpoints)
    assert report.endpoints[0].fhir_base == PRAIRIE
    assert report.endpoints[1].display_name == "Bayou Family Medicine, LLC"


def test_oracle_current_keeps_the_address_when_the_id_differs() -> None:
    cedar = read_endpoint_file(DATA / "oracle_current.json").endpoints[2]

    assert cedar.source_id == "-Qx7Lm2Np4Rs6Tu8Vw0Yz1Ab3Cd5Ef7Gh"
    assert cedar.fhir_base.endswith("/-Qx7Lm2Np4Rs6Tu8Vw0Yz1Ab3Cd5Ef_Gh")


def test_oracle_current_second_organization_on_a_tenant_is_an_alias() -> None:
    report = read_endpoint_file(DATA / "oracle_current.json")

    assert by_base(report)[PRAIRIE].aliases == ("Prairie View Clinics",)
    (skip,) = report.skipped
    assert "Prairie View Clinics" in skip
    assert "duplicates" in skip


def test_oracle_legacy_shape_reads_the_contained_organization() -> None:
    report = read_endpoint_file(DATA / "oracle_legacy.json")

    assert report.format == "oracle-legacy"
    assert [e.display_name for e in report.endpoints] == [
        "Prairie View Regional Medical Center",
        "Bayou Family Medicine, LLC",
        "Cedar Ridge Podiatry",
    ]
    assert all(e.vendor == "cerner" for e in report.endpoints)
    assert report.endpoints[0].fhir_base == PRAIRIE
    (skip,) = report.skipped
    assert "Tidewater Eye Associates" in skip
    assert "status is 'off'" in skip


def test_both_oracle_shapes_name_the_same_tenant_alike() -> None:
    current = read_endpoint_file(DATA / "oracle_current.json")
    legacy = read_endpoint_file(DATA / "oracle_legacy.json")

    assert by_base(current)[PRAIRIE].name == by_base(legacy)[PRAIRIE].name


def test_names_and_aliases_a_directory_gives_are_capped() -> None:
    long = "Lakeside " + "x" * 5000
    parent = organization("parent", "Parent " + "y" * 5000)
    brand = organization(
        "brand",
        long,
        "ep",
        alias=[f"Alias {n} " + "z" * 500 for n in range(100)],
        partOf={"reference": "Organization/parent"},
    )
    report = parse_endpoint_bundle(
        bundle(parent, brand, endpoint("ep", "https://fhir.lakeside.example/r4"))
    )

    [imported] = report.endpoints
    assert imported.display_name == long[:200]
    assert imported.brand_name is not None
    assert len(imported.brand_name) == 200
    assert len(imported.aliases) == 20
    assert all(len(alias) <= 200 for alias in imported.aliases)


def test_cerner_host_in_a_brands_bundle_is_vendor_cerner() -> None:
    document = bundle(
        organization(
            "o",
            "Hilltop Hospital",
            "e",
            extension=[
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/organization-portal",
                    "extension": [{"url": "portalUrl", "valueUrl": "https://hilltop.example.org"}],
                }
            ],
        ),
        endpoint("e", "https://fhir-myrecord.cerner.com/r4/0b1c2d3e"),
    )

    report = parse_endpoint_bundle(document)

    assert report.format == "brands"
    assert report.endpoints[0].vendor == "cerner"
    assert report.endpoints[0].portal_url == "https://hilltop.example.org"


# --- naming -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "brands.json",
        "brands_problems.json",
        "oracle_current.json",
        "oracle_legacy.json",
    ],
)
def test_parsing_twice_gives_identical_names_and_results(name: str) -> None:
    first = read_endpoint_file(DATA / name)
    second = parse_endpoint_bundle(load(name))

    assert first == second
    names = [e.name for e in first.endpoints]
    assert len(set(names)) == len(names)
    assert all(SLUG.match(n) and len(n) <= 63 for n in names)


def test_names_fold_accents_and_stay_within_63_characters() -> None:
    long_name = "Saint Éloi " + "Regional Medical Center " * 5
    document = bundle(
        organization("a", "Hôpital Saint-Éloi", "a"),
        endpoint("a", "https://fhir.eloi.example.org/r4"),
        organization("b", long_name, "b"),
        endpoint("b", "https://fhir.long.example.org/r4"),
        organization("c", long_name, "c"),
        endpoint("c", "https://fhir.long2.example.org/r4"),
        organization("d", "Ωμέγα Κλινική", "d"),
        endpoint("d", "https://fhir.omega.example.org/r4"),
    )

    names = [e.name for e in parse_endpoint_bundle(document).endpoints]

    assert names[0] == "hopital-saint-eloi"
    assert names[1].startswith("saint-eloi-regional-medical-center")
    assert names[1] != names[2]
    assert re.fullmatch(r"endpoint-[0-9a-f]{8}", names[3])
    assert all(SLUG.match(n) and len(n) <= 63 for n in names)


def test_a_colliding_name_does_not_depend_on_what_comes_before_it() -> None:
    same = [
        organization("a", "Valley Clinic", "a"),
        endpoint("a", "https://fhir.valley-a.example.org/r4"),
        organization("b", "Valley Clinic", "b"),
        endpoint("b", "https://fhir.valley-b.example.org/r4"),
    ]
    unrelated = [organization("z", "Zenith Care", "z"), endpoint("z", "https://z.example.org/r4")]

    plain = by_base(parse_endpoint_bundle(bundle(*same)))
    grown = by_base(parse_endpoint_bundle(bundle(*unrelated, *same)))

    for base in ("https://fhir.valley-a.example.org/r4", "https://fhir.valley-b.example.org/r4"):
        assert plain[base].name == grown[base].name


def test_a_registered_base_keeps_its_tenants_name_when_the_directory_renames_it() -> None:
    renamed = bundle(
        organization("a", "Valley Health Network", "a"),
        endpoint("a", "https://fhir.valley-a.example.org/r4"),
        organization("b", "Hillside Clinic", "b"),
        endpoint("b", "https://fhir.valley-b.example.org/r4"),
    )
    known = {
        "https://fhir.valley-a.example.org/r4": "valley-clinic",
        # Another base already holds the name the new organisation would get.
        "https://fhir.elsewhere.example.org/r4": "hillside-clinic",
    }

    found = by_base(named(parse_endpoint_bundle(renamed), known))

    first = found["https://fhir.valley-a.example.org/r4"]
    assert (first.name, first.display_name) == ("valley-clinic", "Valley Health Network")
    second = found["https://fhir.valley-b.example.org/r4"].name
    assert re.fullmatch(r"hillside-clinic-[0-9a-f]{8}", second)
    # Named so again on the next import, once the new tenant is registered.
    again = by_base(
        named(
            parse_endpoint_bundle(renamed),
            {**known, "https://fhir.valley-b.example.org/r4": second},
        )
    )
    assert again["https://fhir.valley-b.example.org/r4"].name == second


# --- broken input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (load("not_a_bundle.json"), "document is a Patient"),
        ([], "not a FHIR resource"),
        ("Bundle", "not a FHIR resource"),
        ({"resourceType": "Bundle", "entry": {"resource": {}}}, "'entry' is not a list"),
        (load("no_endpoints.json"), "holds no Endpoint resources"),
        ({"resourceType": "Bundle", "type": "collection"}, "holds no Endpoint resources"),
    ],
)
def test_unknown_shapes_are_config_errors(document: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_endpoint_bundle(document)


def test_malformed_entries_are_skipped_not_fatal() -> None:
    document = bundle(organization("o", "Fine Clinic", "e"), endpoint("e", "https://f.example/r4"))
    document["entry"] += [42, {"fullUrl": "urn:uuid:1"}, {"resource": {"id": "x"}}]
    weird = endpoint("w", ["not", "a", "string"], status=7, connectionType="rest")
    document["entry"].append({"resource": weird})
    document["entry"].append({"resource": organization("p", "Weird Clinic", "w")})

    report = parse_endpoint_bundle(document)

    assert [e.name for e in report.endpoints] == ["fine-clinic"]
    assert len(report.skipped) == 4
    assert "status is '7'" in report.skipped[-1]


def test_a_bundle_of_more_entries_than_an_import_takes_is_refused() -> None:
    document = {"resourceType": "Bundle", "entry": [{}] * (MAX_ENTRIES + 1)}

    with pytest.raises(ConfigError, match=f"more than the {MAX_ENTRIES:,}"):
        parse_endpoint_bundle(document)


def test_a_file_of_tiny_values_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # About 9 MB, well under the size limit, that would parse into millions of objects.
    path = tmp_path / "tiny.json"
    path.write_bytes(b'{"resourceType":"Bundle","entry":[' + b"{}," * MAX_JSON_VALUES + b"{}]}")

    with pytest.raises(ConfigError, match="refusing to parse it"):
        read_endpoint_file(path)


def test_what_a_skip_sentence_quotes_from_a_hostile_bundle_is_cut_short() -> None:
    long_id = "e" * 5000
    document = bundle(
        organization("o", "Fine Clinic", "fine", "long", long_id),
        endpoint("fine", "https://fhir.fine.example/r4"),
        endpoint("long", "https://fhir.long.example/" + "a" * 5000),
        endpoint(long_id, "https://fhir.other.example/r4", status="off" * 2000),
    )

    report = parse_endpoint_bundle(document)

    assert [e.name for e in report.endpoints] == ["fine-clinic"]
    assert len(report.skipped) == 2
    assert "longer than 2,048 characters" in report.skipped[0]
    assert all(len(sentence) < 400 for sentence in report.skipped)


def test_invalid_json_names_the_file() -> None:
    path = DATA / "truncated.json"
    with pytest.raises(ConfigError, match="is not valid JSON") as caught:
        read_endpoint_file(path)
    assert str(path) in caught.value.message


def test_shape_errors_from_a_file_name_the_file() -> None:
    path = DATA / "not_a_bundle.json"
    with pytest.raises(ConfigError, match=re.escape("not_a_bundle.json: Expected a FHIR Bundle")):
        read_endpoint_file(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match="Cannot read endpoint file") as caught:
        read_endpoint_file(path)
    assert str(path) in caught.value.message


def test_files_over_50_mb_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no 50 MB written to disk

    with pytest.raises(ConfigError, match="larger than 50 MB"):
        read_endpoint_file(path)


def test_a_file_at_the_limit_is_still_read(tmp_path: Path) -> None:
    document = copy.deepcopy(load("oracle_legacy.json"))
    body = orjson.dumps(document)
    path = tmp_path / "padded.json"
    path.write_bytes(body + b" " * (MAX_FILE_BYTES - len(body)))

    assert len(read_endpoint_file(path).endpoints) == 3


# --- what the provider picker keeps -------------------------------------------------------


def test_both_oracle_shapes_keep_the_organization_address() -> None:
    current = by_base(read_endpoint_file(DATA / "oracle_current.json"))[PRAIRIE]
    legacy = by_base(read_endpoint_file(DATA / "oracle_legacy.json"))[PRAIRIE]

    assert current.address == Address("100 Main St", "Salina", "KS", "67401")
    assert legacy.address == Address("1 Hospital Dr", "Salina", "Kansas", None)


def test_brands_keep_portal_name_address_and_the_brand_an_organization_is_part_of() -> None:
    lakeside = by_base(read_endpoint_file(DATA / "brands.json"))[LAKESIDE_R4]
    assert lakeside.portal_name == "Lakeside MyChart"
    assert lakeside.address is not None
    assert (lakeside.address.city, lakeside.address.state) == ("Madison", "WI")

    child = organization(
        "kids",
        "Lakeside Children's",
        "kids",
        partOf={"reference": "Organization/parent"},
        address=[{"line": ["1 Elm St", "Floor 2"], "city": "Madison", "postalCode": "53703"}],
    )
    parent = organization("parent", "Lakeside Health", "parent")
    report = parse_endpoint_bundle(
        bundle(
            parent,
            child,
            endpoint("parent", "https://fhir.lakeside.example.org/r4"),
            endpoint("kids", "https://fhir.lakeside.example.org/kids/r4"),
        )
    )
    kids = by_base(report)["https://fhir.lakeside.example.org/kids/r4"]
    assert kids.brand_name == "Lakeside Health"
    assert kids.address == Address("1 Elm St, Floor 2", "Madison", None, "53703")
    assert by_base(report)["https://fhir.lakeside.example.org/r4"].brand_name is None


def test_brand_logos_are_read_from_brand_and_portal_extensions_and_capped() -> None:
    def ext(url: str, *parts: tuple[str, str]) -> dict[str, Any]:
        return {
            "url": f"http://hl7.org/fhir/StructureDefinition/{url}",
            "extension": [{"url": name, "valueUrl": value} for name, value in parts],
        }

    logos = [("brandLogo", f"https://cdn.example.org/{n}.png") for n in range(5)]
    parent = organization(
        "parent", "Parent Health", extension=[ext("organization-portal", ("portalLogo", "data:x"))]
    )
    brand = organization(
        "brand", "Brand Clinic", "b", extension=[ext("organization-brand", *logos)]
    )
    child = organization("child", "Child Clinic", "c", partOf={"reference": "Organization/parent"})
    report = parse_endpoint_bundle(
        bundle(
            parent,
            brand,
            child,
            endpoint("b", "https://fhir.brand.example/r4"),
            endpoint("c", "https://fhir.child.example/r4"),
        )
    )

    found = by_base(report)
    assert found["https://fhir.brand.example/r4"].logo_urls == tuple(v for _, v in logos[:3])
    # An organisation without a logo shows its parent brand's.
    assert found["https://fhir.child.example/r4"].logo_urls == ("data:x",)
