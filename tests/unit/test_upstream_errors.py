"""TorchServe's own errors as ours (Envoy's custom_response filter), and the filters each route
runs: what the config says; tests/live/test_envoy_edges.py runs it in Envoy."""

from __future__ import annotations

from typing import Any

from modelserver.catalogue import Catalogue
from modelserver.launcher.envoy.config import envoy_config
from modelserver.launcher.envoy.routes import LUA_FILTER, METADATA_NAMESPACE, MODEL_KEY, RouteTable
from modelserver.launcher.envoy.upstream_errors import (
    CUSTOM_RESPONSE_FILTER,
    TORCHSERVE_REPLY_HEADER,
    upstream_errors,
)
from modelserver.launcher.settings import settings_from_command_line
from modelserver.serving.headers import HANDLER_ANSWER


def public_manager() -> dict[str, Any]:
    """The public listener's HTTP connection manager, as the launcher would run it."""
    config = envoy_config(
        settings_from_command_line(["--port", "3100"], {}), "key", RouteTable(Catalogue.load(), {})
    )
    listener = config["static_resources"]["listeners"][0]
    return dict(listener["filter_chains"][0]["filters"][-1]["typed_config"])


def filter_named(manager: dict[str, Any], name: str) -> dict[str, Any]:
    """One HTTP filter of the manager, by name."""
    [found] = [f for f in manager["http_filters"] if f["name"] == name]
    return dict(found)


def test_the_table_turns_torchserves_passing_states_into_retryable_503s() -> None:
    table = {error.matches: error for error in upstream_errors()}
    # A refused key (TorchServe restarted), no worker, a worker that died holding the batch.
    for status in ("400", "503", "507"):
        assert table[status].retry and table[status].status in (None, 503)
    assert table["503"].status is None and "make scale MODEL=%METADATA" in table["503"].sentence
    assert f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{MODEL_KEY})%" in table["500"].sentence
    assert not table["500"].retry and table["500"].status is None
    # Exact statuses before the classes: the first match wins.
    order = [error.matches for error in upstream_errors()]
    assert order[-2:] == ["4xx", "5xx"]


def test_only_torchserves_own_replies_are_rewritten_never_an_answer_or_envoys_reply() -> None:
    manager = public_manager()
    config = filter_named(manager, CUSTOM_RESPONSE_FILTER)["typed_config"]
    matchers = config["custom_response_matcher"]["matcher_list"]["matchers"]
    assert len(matchers) == len(upstream_errors())
    for matcher in matchers:
        status, torchserve, not_marked = matcher["predicate"]["and_matcher"]["predicate"]
        assert status["single_predicate"]["input"]["name"] == "status"
        assert (
            torchserve["single_predicate"]["input"]["typed_config"]["header_name"] == TORCHSERVE_REPLY_HEADER
        )
        marked = not_marked["not_matcher"]["single_predicate"]["input"]["typed_config"]
        assert marked["header_name"] == HANDLER_ANSWER


def test_the_handlers_mark_is_removed_only_after_custom_response_read_it() -> None:
    manager = public_manager()
    names = [f["name"] for f in manager["http_filters"]]
    mutation = filter_named(manager, "envoy.filters.http.header_mutation")
    # Responses pass the filters in reverse: the mutation (earlier) runs after custom_response.
    assert names.index("envoy.filters.http.header_mutation") < names.index(CUSTOM_RESPONSE_FILTER)
    assert {"remove": HANDLER_ANSWER} in mutation["typed_config"]["mutations"]["response_mutations"]
    virtual_host = manager["route_config"]["virtual_hosts"][0]
    assert HANDLER_ANSWER not in virtual_host["response_headers_to_remove"]


def test_lua_runs_only_where_a_body_field_picks_the_model() -> None:
    routes = public_manager()["route_config"]["virtual_hosts"][0]["routes"]
    with_lua = [r for r in routes if LUA_FILTER not in r.get("typed_per_filter_config", {})]
    assert with_lua and all(r["metadata"]["filter_metadata"][LUA_FILTER]["select_by"] for r in with_lua)
    assert {r["match"].get("path") for r in with_lua} == {"/astromech", "/predict"}
    sklearn = next(r for r in routes if r["match"].get("path") == "/sklearn")
    assert sklearn["typed_per_filter_config"][LUA_FILTER]["disabled"] is True


def test_every_model_route_names_its_model_for_the_sentences() -> None:
    routes = RouteTable(Catalogue.load(), {}).routes()
    to_models = [r for r in routes if r.get("route", {}).get("cluster", "").startswith("model_")]
    assert to_models
    for route in to_models:
        named = route["metadata"]["filter_metadata"][METADATA_NAMESPACE]
        assert route["route"]["prefix_rewrite"] == f"/predictions/{named[MODEL_KEY]}"
        assert named["body_limit"].endswith("bytes")  # merged with, not replacing, the limit
