"""Envoy routes generated from the catalogue: selection by body field, skipped models, 405s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelserver.catalogue import TORCHSERVE_JOB_QUEUE, Catalogue
from modelserver.errors import ConfigError
from modelserver.kinds.crystal import CrystalSettings
from modelserver.kinds.text import TextModelSettings
from modelserver.launcher.envoy.config import envoy_config
from modelserver.launcher.envoy.routes import (
    BINARY_TENSORS_HEADER,
    BODY_LIMIT_BYTES,
    BUFFER_FILTER,
    GENERIC_CLUSTER,
    LUA_FILTER,
    V2_INFER_PATH,
    RouteTable,
    model_cluster,
)
from modelserver.launcher.settings import settings_from_command_line
from modelserver.launcher.torchserve.config import CONFIG_TEMPLATE, read_properties
from modelserver.protocols.open_inference import PROTOCOL, PROTOCOL_HEADER
from modelserver.serving.headers import HANDLER_ANSWER
from tests.helpers import unpinned


def find(routes: list[dict[str, Any]], path: str, value: str | None = None) -> dict[str, Any]:
    """The first route for `path` whose metadata match is `value` (None: no metadata match), for
    a request that pins no version."""
    for route in unpinned(routes):
        match = route["match"]
        if match.get("path") != path:
            continue
        selectors = match.get("dynamic_metadata")
        if value is None and selectors is None:
            return route
        if (
            value is not None
            and selectors
            and selectors[0]["value"].get("string_match", {}).get("exact") == value
        ):
            return route
    raise KeyError((path, value))


def test_direct_routes_rewrite_to_their_model() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    assert find(routes, "/sklearn")["route"]["prefix_rewrite"] == "/predictions/crystal_sklearn"
    assert find(routes, "/inference")["route"]["prefix_rewrite"] == "/predictions/fill_mask"
    assert find(routes, "/predict")["route"]["prefix_rewrite"] == "/predictions/sentiment"


def test_predict_selects_any_model_by_name_or_hub_id() -> None:
    table = RouteTable(Catalogue.load(), {})
    choices = table.choices(Catalogue.load().routes["/predict"])
    assert choices["camembert-base"] == choices["camembert"] == "camembert"
    assert choices["distilbert-base-uncased-finetuned-sst-2-english"] == "sentiment"
    routes = table.routes()
    assert find(routes, "/predict", "camembert-base")["route"]["prefix_rewrite"] == "/predictions/camembert"
    unknown = [r for r in unpinned(routes) if r["match"].get("path") == "/predict" and "direct_response" in r]
    assert len(unknown) == 1 and unknown[0]["direct_response"]["status"] == 400
    assert "fill_mask" in unknown[0]["direct_response"]["body"]["inline_string"]


def test_astromech_accepts_only_its_choices() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    assert find(routes, "/astromech", "pytorch")["route"]["prefix_rewrite"] == "/predictions/crystal_pytorch"
    fallback = find(routes, "/astromech")
    assert fallback["direct_response"]["status"] == 400
    assert (
        "sklearn, pytorch" in fallback["direct_response"]["body"]["inline_string"]
        or "pytorch, sklearn" in (fallback["direct_response"]["body"]["inline_string"])
    )


def test_a_skipped_model_answers_503_with_the_reason_everywhere() -> None:
    reason = "cannot fetch bert-base-uncased; set FILL_MASK_MODEL"
    routes = RouteTable(Catalogue.load(), {"fill_mask": reason}).routes()
    for route in (
        find(routes, "/inference"),
        find(routes, "/predictions/fill_mask"),
        find(routes, "/predict", "bert-base-uncased"),
    ):
        assert route["direct_response"]["status"] == 503
        assert reason in route["direct_response"]["body"]["inline_string"]
        assert route["response_headers_to_add"][0]["header"]["key"] == "retry-after"


def test_wrong_methods_on_public_paths_are_405() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    [not_allowed] = [
        r for r in routes if "safe_regex" in r["match"] and r.get("direct_response", {}).get("status") == 405
    ]
    assert not_allowed["direct_response"]["status"] == 405
    for path in ("/sklearn", "/pytorch", "/astromech", "/inference", "/predict"):
        assert path in not_allowed["match"]["safe_regex"]["regex"]


def test_body_selector_rules_and_the_field_each_route_names_for_lua() -> None:
    table = RouteTable(Catalogue.load(), {})
    assert [rule["selectors"][0]["key"] for rule in table.selector_rules()] == ["model", "model_name"]
    routes = table.routes()
    for path, field in (("/astromech", "model"), ("/predict", "model_name")):
        # The route a body that is not strict JSON lands on names the field Lua looks for.
        assert find(routes, path)["metadata"]["filter_metadata"][LUA_FILTER] == {"select_by": field}
    assert LUA_FILTER not in find(routes, "/sklearn")["metadata"]["filter_metadata"]


@pytest.mark.parametrize(
    ("routes", "problem"),
    [
        ({"/x": {"model": "nope"}}, "unknown model"),
        ({"x": {"model": "m"}}, "must look like"),
        ({"/x": {"select_by": "model"}}, "needs a 'model'"),
    ],
)
def test_bad_routes_fail_the_catalogue(tmp_path: Path, routes: dict[str, Any], problem: str) -> None:
    path = tmp_path / "models.yaml"
    model = {"kind": "topics", "source": {"default": "x"}}
    path.write_text(yaml.safe_dump({"models": {"m": model}, "routes": routes}))
    with pytest.raises(ConfigError, match=problem):
        Catalogue.load(path)


def test_a_hub_id_brought_through_the_variable_is_routable() -> None:
    """FILL_MASK_MODEL=roberta-base: /predict routes that id, and the default's id no longer."""
    table = RouteTable(Catalogue.load(), {}, {"fill_mask": ("fill_mask", "roberta-base")})
    choices = table.choices(Catalogue.load().routes["/predict"])
    assert choices["roberta-base"] == "fill_mask" and "bert-base-uncased" not in choices


def test_routes_to_models_bound_the_wait_per_answer_not_per_stream() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    inference = find(routes, "/inference")["route"]
    assert inference["timeout"] == "0s" and inference["idle_timeout"] == "125s"
    generic = find(routes, "/predictions/camembert")["route"]
    assert generic["prefix_rewrite"] == "/predictions/camembert" and generic["idle_timeout"] == "125s"


def test_only_routes_that_pick_a_model_parse_the_body() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    disabled = "envoy.filters.http.json_to_metadata"
    for path in ("/sklearn", "/inference", "/prediction", "/predictions/fill_mask"):
        assert find(routes, path)["typed_per_filter_config"][disabled]["disabled"] is True
    for path, value in (("/astromech", None), ("/astromech", "sklearn"), ("/predict", None)):
        assert disabled not in find(routes, path, value)["typed_per_filter_config"]


def test_each_model_has_its_own_cluster_with_its_admission_limits() -> None:
    catalogue = Catalogue.load()
    table = RouteTable(catalogue, {})
    clusters = {cluster["name"]: cluster for cluster in table.clusters(9080, Path("/run/shadow.sock"))}
    assert find(table.routes(), "/sklearn")["route"]["cluster"] == model_cluster("crystal_sklearn")
    assert find(table.routes(), "/predictions/camembert")["route"]["cluster"] == model_cluster("camembert")
    assert GENERIC_CLUSTER in clusters
    for name, entry in catalogue.models.items():
        [limits] = clusters[model_cluster(name)]["circuit_breakers"]["thresholds"]
        assert limits["max_connections"] == entry.admission.concurrency
        assert limits["max_requests"] == entry.admission.concurrency + entry.admission.queue
        assert limits["max_pending_requests"] == entry.admission.queue
        assert limits["max_retries"] == entry.admission.concurrency  # a whole lost batch may retry


def test_admission_defaults_follow_batches_and_stay_within_torchserves_queue(tmp_path: Path) -> None:
    sklearn = Catalogue.load().entry("crystal_sklearn")
    running = 2 * sklearn.torchserve.batchSize * sklearn.torchserve.maxWorkers
    assert sklearn.admission.concurrency == min(running, TORCHSERVE_JOB_QUEUE)
    assert sklearn.admission.queue == 4 * sklearn.admission.concurrency
    properties = read_properties(CONFIG_TEMPLATE.read_text(encoding="utf-8"))
    assert int(properties["job_queue_size"]) == TORCHSERVE_JOB_QUEUE

    path = tmp_path / "models.yaml"
    big = {"kind": "topics", "source": {"default": "x"}, "torchserve": {"batchSize": 64, "maxWorkers": 4}}
    path.write_text(yaml.safe_dump({"models": {"m": big}}))
    assert Catalogue.load(path).entry("m").admission.concurrency == TORCHSERVE_JOB_QUEUE
    big["admission"] = {"concurrency": TORCHSERVE_JOB_QUEUE + 1}
    path.write_text(yaml.safe_dump({"models": {"m": big}}))
    with pytest.raises(ConfigError, match="concurrency"):
        Catalogue.load(path)


def test_only_replies_the_model_never_made_are_retried_never_its_500_or_a_slow_try() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    for path in ("/sklearn", "/inference", "/predictions/camembert"):
        route = find(routes, path)["route"]
        policy = route["retry_policy"]
        retried_on = set(policy["retry_on"].split(","))
        unsent = {"connect-failure", "refused-stream", "reset-before-request"}
        assert retried_on == {*unsent, "retriable-headers"}
        # A reply lacking the handler's mark is TorchServe's own (a lost worker); every
        # answer of the handler, a 500 included, carries it and is final.
        [mark] = policy["retriable_headers"]
        assert mark == {"name": HANDLER_ANSWER, "present_match": True, "invert_match": True}
        assert policy["num_retries"] == 1
        assert "per_try_timeout" not in policy and "per_try_idle_timeout" not in policy
        assert not retried_on & {"5xx", "gateway-error", "retriable-status-codes", "reset"}


def test_v2_infer_routes_go_to_each_models_cluster_marked_for_the_worker() -> None:
    routes = RouteTable(Catalogue.load(), {"topics": "no data"}).routes()
    binary = next(
        r for r in routes if r.get("direct_response", {}).get("status") == 400 and "safe_regex" in r["match"]
    )
    assert binary["match"]["safe_regex"]["regex"] == V2_INFER_PATH
    assert {"name": BINARY_TENSORS_HEADER, "present_match": True} in binary["match"]["headers"]
    assert routes.index(binary) < routes.index(find(routes, "/v2/models/crystal_sklearn/infer"))
    for path in ("/v2/models/crystal_sklearn/infer", "/v2/models/crystal_sklearn/versions/1/infer"):
        route = find(routes, path)
        assert route["route"]["cluster"] == model_cluster("crystal_sklearn")
        assert route["route"]["prefix_rewrite"] == "/predictions/crystal_sklearn"
        added = [h["header"] for h in route["request_headers_to_add"]]
        assert {"key": PROTOCOL_HEADER, "value": PROTOCOL} in added
    # A skipped model's infer is the same 503 as its own routes.
    assert find(routes, "/v2/models/topics/infer")["direct_response"]["status"] == 503


def test_clients_cannot_send_the_workers_protocol_mark() -> None:
    config = envoy_config(
        settings_from_command_line(["--port", "3100"], {}), "key", RouteTable(Catalogue.load(), {})
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"]
    route_config = manager["route_config"]
    # The virtual host's removals run before a route's additions only with this flag.
    assert route_config["most_specific_header_mutations_wins"] is True
    assert PROTOCOL_HEADER in route_config["virtual_hosts"][0]["request_headers_to_remove"]


def test_each_model_route_takes_the_body_its_kind_can_need() -> None:
    """A language model's body is bounded by its character caps, so Envoy refuses more before
    holding it; a crystal body of 10,000 full-precision rows needs about a megabyte; a route
    that picks its model from the body takes the largest of its models' limits."""
    routes = RouteTable(Catalogue.load(), {}).routes()

    def limit(path: str) -> int:
        config = find(routes, path)["typed_per_filter_config"][BUFFER_FILTER]
        assert config["@type"].endswith("BufferPerRoute")
        figure = find(routes, path)["metadata"]["filter_metadata"]["modelserver"]["body_limit"]
        assert figure == f"{config['buffer']['max_request_bytes']:,} bytes"
        return int(config["buffer"]["max_request_bytes"])

    text = TextModelSettings().max_body_bytes()
    # 16,384 characters at 12 bytes at most each, the texts' quotes, the other fields.
    assert 16_384 * 12 < text < 256 << 10
    for path in ("/inference", "/predictions/fill_mask", "/v2/models/sentiment/infer"):
        assert limit(path) == text, path
    # /predict may pick any model by `model_name`, topics and the crystal ones too.
    for path in ("/sklearn", "/pytorch", "/prediction", "/predictions/topics", "/astromech", "/predict"):
        assert limit(path) == BODY_LIMIT_BYTES, path
    assert CrystalSettings(framework="sklearn", max_rows=100).max_body_bytes() < 64 << 10
