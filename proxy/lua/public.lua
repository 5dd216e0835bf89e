-- The public listener's Lua filter (LuaJIT, as Envoy embeds it). The pure functions below are
-- unit-tested outside Envoy (tests/unit/test_envoy_lua.py); envoy_on_request and
-- envoy_on_response only read Envoy's handle and apply what they return.

-- The value of `field` in a body that is not strict JSON (NaN, Infinity, 1e400 from a Python
-- client) when it is the body's first or last member, as a plain model name; nil otherwise.
-- json_to_metadata reads the field from strict JSON; this lets such a body still reach its
-- model and get a 422 there, not a 400. Handlers re-check the field, so a misleading match
-- can never pick the wrong model.
function model_field(text, field)
  local name = '"' .. field .. '"%s*:%s*"([%w%._/%-]+)"'
  return string.match(text, '^%s*{%s*' .. name) or string.match(text, ',%s*' .. name .. '%s*}%s*$')
end

-- The contents of the JSON string that starts at `first` (escapes kept as they are).
function json_string_at(text, first)
  local i = first
  while i <= #text do
    local c = string.sub(text, i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return string.sub(text, first, i - 1)
    else
      i = i + 1
    end
  end
  return nil
end

-- An error answer as the client gets it: (status, body, retry-after seconds or nil), or nil
-- when the body is already ours (a JSON object with an "error" key). TorchServe's own errors
-- ({"code", "type", "message"}) become {"error", "code"}.
function public_error(status, text)
  -- An escaped \"error\" inside a string is preceded by a backslash, so it does not count.
  if string.find(text, '[{,]%s*"error"%s*:') then return nil end
  local message = nil
  local _, stop = string.find(text, '"message"%s*:%s*"')
  if stop ~= nil then message = json_string_at(text, stop + 1) end
  if message == nil or message == "" then
    message = "the model server could not answer (HTTP " .. status .. ")"
  end
  -- TorchServe refusing Envoy's key: it restarted with a new key, which Envoy is about to get
  -- (a hot restart). Never the client's fault: 503, retry.
  if status == 400 and string.find(message, "Token Authorization failed", 1, true) then
    status = 503
    message = "the model server is restarting; retry shortly"
  end
  -- TorchServe's 507: the worker died holding this request's batch and is being replaced. A
  -- passing server state, not storage: 503, retry.
  if status == 507 then status = 503 end
  local retry_after = nil
  if status == 503 or status == 429 then retry_after = "1" end
  return status, '{"error":"' .. message .. '","code":' .. status .. '}', retry_after
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

function envoy_on_response(handle)
  local status = tonumber(handle:headers():get(":status"))
  if status == nil or status < 400 then return end
  local body = handle:body(true)
  local answer_status, answer, retry_after = public_error(status, body:getBytes(0, body:length()))
  if answer_status == nil then return end
  body:setBytes(answer)
  handle:headers():replace(":status", tostring(answer_status))
  handle:headers():replace("content-type", "application/json")
  if retry_after ~= nil then handle:headers():replace("retry-after", retry_after) end
end
