-- The public listener's Lua filter (LuaJIT, as Envoy embeds it), on the routes that pick a model
-- by a body field only. The pure function below is unit-tested outside Envoy
-- (tests/unit/test_envoy_lua.py); envoy_on_request only reads Envoy's handle and applies what it
-- returns. It has no envoy_on_response: a response costs it nothing.

-- The value of `field` in a body that is not strict JSON (NaN, Infinity, 1e400 from a Python
-- client) when it is the body's first or last member, as a plain model name; nil otherwise.
-- json_to_metadata reads the field from strict JSON; this lets such a body still reach its
-- model and get a 422 there, not a 400. Handlers re-check the field, so a misleading match
-- can never pick the wrong model.
function model_field(text, field)
  local name = '"' .. field .. '"%s*:%s*"([%w%._/%-]+)"'
  return string.match(text, '^%s*{%s*' .. name) or string.match(text, ',%s*' .. name .. '%s*}%s*$')
end

-- Routes that pick a model from a body field carry the field's name in their metadata.
function envoy_on_request(handle)
  local field = handle:metadata():get("select_by")
  if field == nil then return end
  local found = handle:streamInfo():dynamicMetadata():get("modelserver")
  if found == nil or found["body_not_json"] == nil or found[field] ~= nil then return end
  local body = handle:body()
  if body == nil then return end
  local value = model_field(body:getBytes(0, body:length()), field)
  if value ~= nil then
    handle:streamInfo():dynamicMetadata():set("modelserver", field, value)
    handle:clearRouteCache()
  end
end
