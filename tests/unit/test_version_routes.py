"""Envoy routes of a model with a candidate: per request shape, a pinned version
(`x-model-version`), an unknown pin (404), the canary share to the candidate, then the primary
mirroring its shadow share to the comparer; the runtime keys holding the shares; the clusters;
and the whole config accepted by `envoy --mode validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelserver.catalogue import Catalogue
from modelserver.launcher.envoy.config import envoy_config, render_config
from modelserver.launcher.envoy.process import validate
from modelserver.launcher.envoy.routes import (
    GENERIC_CLUSTER,
    PINS_ANY,
    SHADOW_CLUSTER,
    RouteTable,
    model_cluster,
    percent_of,
    pinned,
)
from modelserver.launcher.settings import LaunchSettings
from modelserver.launcher.traffic.state import Shares
from modelserver.serving.headers import VERSION_HEADER
from tests.helpers import CANDIDATE_VERSION, candidate_catalogue

PRIMARY = "crystal_sklearn"
CANDIDATE = "crystal_sklearn__candidate"
CANARY_KEY = "modelserver.canary.crystal_sklearn"
SHADOW_KEY = "modelserver.shadow.crystal_sklearn"
SHADOW_SOCKET = Path("/run/modelserver/shadow.sock")


@pytest.fixture(name="catalogue", scope="module")
def fixture_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    """The project's catalogue with a candidate (version 2) on crystal_sklearn."""
    return candidate_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(name="routes", scope="module")
def fixture_routes(catalogue: Catalogue) -> list[dict[str, Any]]:
    """Every generated route, every model served."""
    return RouteTable(catalogue, {}).routes()


def picked_by(route: dict[str, Any]) -> str | None:
    """The body field's value a route is taken for (None: it picks no model by a field)."""
    selectors = route["match"].get("dynamic_metadata")
    if not selectors:
        return None
    value = selectors[0]["value"]
    return str(value["string_match"]["exact"]) if "string_match" in value else "<any value>"


def shape(routes: list[dict[str, Any]], path: str, value: str | None = None) -> list[dict[str, Any]]:
    """The routes of one request shape, in Envoy's order: `path`, and the body field's `value`
    where the route picks its model by one (None: no field)."""
    return [route for route in routes if route["match"].get("path") == path and picked_by(route) == value]


def pin_of(route: dict[str, Any]) -> dict[str, Any] | None:
    """The route's `x-model-version` matcher, if it has one."""
    return next((h for h in route["match"].get("headers", []) if h["name"] == VERSION_HEADER), None)


def answered_version(route: dict[str, Any]) -> str:
    """The version the route's answers name in `x-model-version`."""
    [added] = [h["header"] for h in route["response_headers_to_add"] if h["header"]["key"] == VERSION_HEADER]
    return str(added["value"])


def outline(route: dict[str, Any]) -> tuple[Any, ...]:
    """What a route does, without the parts every route of a path shares: its version pin,
    where it goes (or its status) and as which path, its runtime share, and the share it mirrors."""
    action = route.get("route", {})
    mirrors = [
        (m["cluster"], m["runtime_fraction"]["runtime_key"])
        for m in action.get("request_mirror_policies", [])
    ]
    runtime = route["match"].get("runtime_fraction", {}).get("runtime_key")
    target = action.get("cluster") or route["direct_response"]["status"]
    return (pin_of(route), target, action.get("prefix_rewrite"), runtime, mirrors)


TO_PRIMARY = (model_cluster(PRIMARY), "/predictions/crystal_sklearn")
TO_CANDIDATE = (model_cluster(CANDIDATE), "/predictions/crystal_sklearn__candidate")
EXPANDED = [
    (pinned(CANDIDATE_VERSION), *TO_CANDIDATE, None, []),
    (pinned("1"), *TO_PRIMARY, None, []),
    (PINS_ANY, 404, None, None, []),
    (None, *TO_CANDIDATE, CANARY_KEY, []),
    (None, *TO_PRIMARY, None, [(SHADOW_CLUSTER, SHADOW_KEY)]),
]


def test_sklearn_tries_the_pins_then_the_canary_then_the_primary_mirroring_its_shadow(
    routes: list[dict[str, Any]],
) -> None:
    to_candidate, to_primary, unknown, canary, primary = shape(routes, "/sklearn")
    assert pin_of(to_candidate) == {"name": VERSION_HEADER, "string_match": {"exact": "2"}}
    assert to_candidate["route"]["cluster"] == "model_crystal_sklearn__candidate"
    assert to_candidate["route"]["prefix_rewrite"] == "/predictions/crystal_sklearn__candidate"
    assert answered_version(to_candidate) == "2"
    assert pin_of(to_primary) == {"name": VERSION_HEADER, "string_match": {"exact": "1"}}
    assert to_primary["route"]["prefix_rewrite"] == "/predictions/crystal_sklearn"
    assert answered_version(to_primary) == "1"
    assert "request_mirror_policies" not in to_primary["route"]  # a pinned request is not shared
    assert pin_of(unknown) == {"name": VERSION_HEADER, "present_match": True}
    assert unknown["direct_response"]["status"] == 404
    sentence = unknown["direct_response"]["body"]["inline_string"]
    assert "model crystal_sklearn has no such version" in sentence and "1, 2" in sentence
    assert pin_of(canary) is None
    assert canary["match"]["runtime_fraction"] == {
        "default_value": {"numerator": 0, "denominator": "HUNDRED"},
        "runtime_key": CANARY_KEY,
    }
    assert canary["route"]["cluster"] == model_cluster(CANDIDATE)
    assert canary["route"]["prefix_rewrite"] == "/predictions/crystal_sklearn__candidate"
    assert answered_version(canary) == "2"
    assert pin_of(primary) is None and "runtime_fraction" not in primary["match"]
    assert primary["route"]["cluster"] == model_cluster(PRIMARY)
    assert primary["route"]["request_mirror_policies"] == [
        {"cluster": SHADOW_CLUSTER, "runtime_fraction": percent_of(SHADOW_KEY)}
    ]
    assert answered_version(primary) == "1"
    # The candidate's routes keep the route's own settings and name the primary for its errors.
    for route in (to_candidate, canary):
        assert route["route"]["idle_timeout"] == primary["route"]["idle_timeout"] == "15s"
        assert route["metadata"]["filter_metadata"]["modelserver"]["model"] == PRIMARY


@pytest.mark.parametrize(
    ("path", "value"),
    [("/sklearn", None), ("/astromech", "sklearn"), ("/predictions/crystal_sklearn", None)],
)
def test_every_request_shape_of_the_model_is_expanded_alike(
    routes: list[dict[str, Any]], path: str, value: str | None
) -> None:
    assert [outline(route) for route in shape(routes, path, value)] == EXPANDED


def test_open_inference_infer_is_split_but_never_mirrored_and_version_1_is_the_primarys(
    routes: list[dict[str, Any]],
) -> None:
    infer = shape(routes, "/v2/models/crystal_sklearn/infer")
    assert [outline(route) for route in infer] == [*EXPANDED[:-1], (None, *TO_PRIMARY, None, [])]
    [versioned] = shape(routes, "/v2/models/crystal_sklearn/versions/1/infer")
    assert outline(versioned) == (None, *TO_PRIMARY, None, [])
    assert answered_version(versioned) == "1"


def test_a_candidate_is_not_served_by_its_own_name(routes: list[dict[str, Any]]) -> None:
    [hidden] = [r for r in routes if r["match"].get("path") == "/predictions/crystal_sklearn__candidate"]
    assert hidden["direct_response"]["status"] == 404
    assert (
        "x-model-version: 2 to /predictions/crystal_sklearn"
        in hidden["direct_response"]["body"]["inline_string"]
    )
    assert "headers" not in hidden["match"]  # any method


@pytest.mark.parametrize(
    "path", ["/pytorch", "/predictions/crystal_pytorch", "/v2/models/crystal_pytorch/infer"]
)
def test_a_model_without_a_candidate_refuses_only_other_versions(
    routes: list[dict[str, Any]], path: str
) -> None:
    unknown, primary = shape(routes, path)
    assert unknown["direct_response"]["status"] == 404
    headers = unknown["match"]["headers"]
    assert {**pinned("1"), "invert_match": True} in headers and PINS_ANY in headers
    sentence = unknown["direct_response"]["body"]["inline_string"]
    assert "model crystal_pytorch has no such version; its versions: 1 " in sentence
    assert outline(primary) == (
        None,
        model_cluster("crystal_pytorch"),
        "/predictions/crystal_pytorch",
        None,
        [],
    )
    assert answered_version(primary) == "1"


def test_every_answer_of_a_model_route_names_its_version(routes: list[dict[str, Any]]) -> None:
    to_models = [route for route in routes if route.get("route", {}).get("cluster", "").startswith("model_")]
    assert len(to_models) > 20
    for route in to_models:
        expected = CANDIDATE_VERSION if route["route"]["cluster"] == model_cluster(CANDIDATE) else "1"
        assert answered_version(route) == expected, route["match"]


def test_a_skipped_candidate_gets_no_share_and_its_pin_answers_503_why(catalogue: Catalogue) -> None:
    reason = "CRYSTAL_SKLEARN_CANDIDATE=/nowhere does not exist"
    routes = RouteTable(catalogue, {CANDIDATE: reason}).routes()
    for path, value in (
        ("/sklearn", None),
        ("/astromech", "sklearn"),
        ("/predictions/crystal_sklearn", None),
    ):
        to_candidate, to_primary, unknown, primary = shape(routes, path, value)
        assert pin_of(to_candidate) == pinned(CANDIDATE_VERSION)
        assert to_candidate["direct_response"]["status"] == 503
        assert reason in to_candidate["direct_response"]["body"]["inline_string"]
        assert outline(to_primary) == (pinned("1"), *TO_PRIMARY, None, [])
        assert unknown["direct_response"]["status"] == 404
        assert outline(primary) == (None, *TO_PRIMARY, None, [])
    assert not [r for r in routes if "runtime_fraction" in r["match"]]
    assert not [r for r in routes if "request_mirror_policies" in r.get("route", {})]


def test_the_shares_given_are_the_runtime_values_of_the_static_layer(catalogue: Catalogue) -> None:
    table = RouteTable(catalogue, {}, shares={PRIMARY: Shares(canary=25, shadow=10)})
    assert table.runtime_values() == {CANARY_KEY: 25, SHADOW_KEY: 33}  # 10% of the primary's 75%
    config = envoy_config(LaunchSettings(), "t", table)
    assert config["layered_runtime"] == {
        "layers": [
            {"name": "static", "static_layer": {CANARY_KEY: 25, SHADOW_KEY: 33}},
            {"name": "admin", "admin_layer": {}},
        ]
    }


def test_without_shares_given_the_catalogues_policy_is_the_runtime(tmp_path: Path) -> None:
    table = RouteTable(candidate_catalogue(tmp_path, traffic={"canary": 10, "shadow": 5}), {})
    assert table.runtime_values() == {CANARY_KEY: 10, SHADOW_KEY: 14}  # 5% of the primary's 90%
    assert not RouteTable(Catalogue.load(), {}).runtime_values()


def test_each_registration_has_a_cluster_and_the_shadow_cluster_is_on_the_given_socket(
    catalogue: Catalogue,
) -> None:
    clusters = {c["name"]: c for c in RouteTable(catalogue, {}).clusters(9080, SHADOW_SOCKET)}
    assert set(clusters) == {
        GENERIC_CLUSTER,
        SHADOW_CLUSTER,
        *(model_cluster(name) for name in catalogue.registrations),
    }
    assert model_cluster(CANDIDATE) in clusters
    [endpoint] = clusters[SHADOW_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": str(SHADOW_SOCKET)}}
    [limits] = clusters[model_cluster(CANDIDATE)]["circuit_breakers"]["thresholds"]
    admission = catalogue.entry(CANDIDATE).admission
    assert limits["max_connections"] == admission.concurrency
    assert limits["max_pending_requests"] == admission.queue
    [upstream] = clusters[model_cluster(CANDIDATE)]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert upstream["endpoint"]["address"]["socket_address"]["port_value"] == 9080


def test_the_default_catalogue_renders_no_shadow_cluster_and_no_shares() -> None:
    table = RouteTable(Catalogue.load(), {})
    names = {cluster["name"] for cluster in table.clusters(9080, SHADOW_SOCKET)}
    assert SHADOW_CLUSTER not in names
    assert all(name == GENERIC_CLUSTER or name.startswith("model_") for name in names)
    routes = table.routes()
    assert not [r for r in routes if "runtime_fraction" in r["match"]]
    assert not [r for r in routes if "request_mirror_policies" in r.get("route", {})]
    built = envoy_config(LaunchSettings(), "t", table)
    assert SHADOW_CLUSTER not in {cluster["name"] for cluster in built["static_resources"]["clusters"]}


def test_envoy_validates_the_whole_config_with_a_candidate(catalogue: Catalogue, tmp_path: Path) -> None:
    (tmp_path / "envoy").mkdir()  # Envoy opens the access log there even to validate
    settings = LaunchSettings(runtime_dir=tmp_path)
    table = RouteTable(catalogue, {}, shares={PRIMARY: Shares(canary=25, shadow=50)})
    config = tmp_path / "envoy.yaml"
    config.write_text(render_config(settings, "t0ken", table), encoding="utf-8")
    built = yaml.safe_load(config.read_text(encoding="utf-8"))
    [shadow] = [c for c in built["static_resources"]["clusters"] if c["name"] == SHADOW_CLUSTER]
    assert shadow["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": str(settings.shadow_socket)}
    }
    result = validate(config)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout + result.stderr
