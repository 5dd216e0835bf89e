"""Envoy's Lua filter (`proxy/lua/public.lua`) in LuaJIT, the Lua Envoy embeds: its pure
functions directly, its Envoy entry points through a recording stand-in for Envoy's handle."""

from __future__ import annotations

from typing import Any

import lupa.luajit21 as luajit
import pytest

from modelserver.launcher.envoy.config import LUA_SOURCE


@pytest.fixture(name="runtime")
def fixture_runtime() -> Any:
    """A fresh LuaJIT state holding the filter's source, as Envoy loads it."""
    runtime = luajit.LuaRuntime(unpack_returned_tuples=True)  # pylint: disable=c-extension-no-member
    runtime.execute(LUA_SOURCE.read_text(encoding="utf-8"))
    return runtime


@pytest.fixture(name="lua")
def fixture_lua(runtime: Any) -> Any:
    """The filter's globals: its functions, callable from Python."""
    return runtime.globals()


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ('{"model": "pytorch", "crystalData": [[NaN, 1, 2, 3]]}', "pytorch"),  # first member
        ('{"crystalData": [[Infinity, 1, 2, 3]], "model": "sklearn"}', "sklearn"),  # last member
        ('  {  "model" : "org/name-1.2_x" , "x": 1e400}', "org/name-1.2_x"),
        ('{"crystalData": [[NaN]], "note": "model", "x": 1}', None),
        ('{"crystalData": [{"model": "pytorch"}, 1], "y": NaN}', None),  # nested, not a member
        ('{"model": "a b"}', None),  # not a plain model name
    ],
)
def test_the_selector_finds_a_model_only_as_a_first_or_last_member(lua: Any, body: str, found: str) -> None:
    assert lua.model_field(body, "model") == found


# Envoy's stream handle, as far as envoy_on_request touches it, over Lua tables the test reads
# back: the route's metadata, the stream's dynamic metadata, the buffered body.
FAKE_HANDLE = """
function(route, dynamic_metadata, text, seen)
  local meta = {get = function(_, key) return route[key] end}
  local dynamic = {
    get = function(_, namespace)
      if next(dynamic_metadata) == nil then return nil end
      return dynamic_metadata
    end,
    set = function(_, namespace, key, value) dynamic_metadata[key] = value end,
  }
  local info = {dynamicMetadata = function() return dynamic end}
  local body = {length = function() return #text end, getBytes = function(_, from, len) return text end}
  return {
    metadata = function() return meta end,
    streamInfo = function() return info end,
    body = function() return body end,
    clearRouteCache = function() seen.route_cache_cleared = true end,
  }
end
"""


def run_on_request(
    runtime: Any, route: dict[str, str], metadata: dict[str, str], body: str
) -> tuple[dict[str, str], bool]:
    """The dynamic metadata after envoy_on_request, and whether it cleared the route cache."""
    dynamic, seen = runtime.table_from(metadata), runtime.table()
    handle = runtime.eval(FAKE_HANDLE)(runtime.table_from(route), dynamic, body, seen)
    runtime.globals().envoy_on_request(handle)
    return dict(dynamic.items()), bool(seen.route_cache_cleared)


def test_a_body_that_is_not_strict_json_still_picks_its_model(runtime: Any) -> None:
    body = '{"model": "pytorch", "crystalData": [[NaN, 1, 2, 3]]}'
    metadata, cleared = run_on_request(runtime, {"select_by": "model"}, {"body_not_json": "true"}, body)
    assert metadata["model"] == "pytorch" and cleared
    # Strict JSON was read by json_to_metadata already; routes without a field are left alone.
    assert run_on_request(runtime, {"select_by": "model"}, {"model": "sklearn"}, body) == (
        {"model": "sklearn"},
        False,
    )
    assert run_on_request(runtime, {}, {"body_not_json": "true"}, body) == ({"body_not_json": "true"}, False)
