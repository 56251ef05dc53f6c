-- Refuses JSON request bodies that name a field the gRPC-JSON transcoder would drop.
--
-- The transcoder follows the proto3 JSON mapping, which ignores unknown fields, and has
-- no switch to refuse them. This filter runs before it, on the same descriptor set:
-- gateway/strict_json.py renders SCHEMA from it (the messages reachable from each HTTP
-- binding, and the bindings in the transcoder's own matching order), so nothing here
-- names a message or a path.
--
-- The scanner only walks the structure: values are left to the transcoder, which parses
-- the whole body after this filter and refuses whatever is not JSON. It accepts the
-- same lenient syntax as the transcoder's parser (single-quoted strings, bare-word
-- keys, trailing commas, \v and \f as white space), else a field could hide behind it.
-- Containers nested under message fields are walked recursively up to MAX_DEPTH;
-- free-form values (Struct, Value, ListValue, Any) and scalars are skipped iteratively,
-- so no input can exhaust the stack. The body is bounded by the buffer filter before
-- this one.

local SCHEMA = {--[[schema]]}

local byte, find, sub, char, format = string.byte, string.find, string.sub, string.char, string.format
local concat, floor, tonumber, type, error, pcall = table.concat, math.floor, tonumber, type, error, pcall

local MESSAGE = 3 -- scalars (1) and free-form values (2) are only skipped
local REPEATED, MAP = 1, 2
-- The transcoder's parser gives up at 100 levels, so nothing valid is refused here.
local MAX_DEPTH = 100
local MAX_REPORTED_PATH = 128

local MESSAGES, BINDINGS = SCHEMA.messages, SCHEMA.bindings
local O_BRACE, C_BRACE, O_BRACKET, C_BRACKET = 123, 125, 91, 93
local QUOTE, APOSTROPHE, COMMA, COLON, BACKSLASH = 34, 39, 44, 58, 92
local SIMPLE_ESCAPES = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

-- Byte loops and plain finds only: LuaJIT compiles them, not pattern matching.
local function byte_set(ranges)
  local set = {}
  for k = 1, #ranges, 2 do
    for c = byte(ranges, k), byte(ranges, k + 1) do
      set[c] = true
    end
  end
  return set
end
-- What numbers and true/false/null are made of; the transcoder checks the rest.
local SCALAR_BYTES = byte_set("09azAZ..++--")
local WORD_START, WORD_BYTES = byte_set("azAZ__$$"), byte_set("azAZ09__$$")

-- The field path of the value being scanned: field names, array indexes and map keys.
-- Module state is safe: a scan never yields, so requests on one worker cannot interleave.
local path, depth_of_path = {}, 0

local function fail(reason, detail)
  error({ reason = reason, detail = detail }, 0)
end

local function malformed(at)
  fail("MALFORMED_JSON", at)
end

-- Hot paths have no loop of their own when the input takes none (one space, a string
-- without escapes): LuaJIT gives up on traces through loops that exit at once.

-- The transcoder also takes \v and \f for white space.
local WHITE = byte_set("  \t\t\n\n\r\r\v\v\f\f")

local function skip_more_ws(s, i)
  while WHITE[byte(s, i)] do
    i = i + 1
  end
  return i
end

local function skip_ws(s, i)
  if not WHITE[byte(s, i)] then
    return i
  end
  if not WHITE[byte(s, i + 1)] then
    return i + 1
  end
  return skip_more_ws(s, i + 2)
end

-- j: the first quote after the opening one, or nil.
local function skip_escaped_string(s, i, quote, j)
  while j ~= nil do
    -- Escaped only by an odd number of backslashes.
    local k = j - 1
    while k > i and byte(s, k) == BACKSLASH do
      k = k - 1
    end
    if (j - 1 - k) % 2 == 0 then
      return j + 1
    end
    j = find(s, quote, j + 1, true)
  end
  malformed(i)
end

-- s:byte(i) is a quote or an apostrophe; returns the index after the closing one.
local function skip_string(s, i)
  local quote = byte(s, i) == QUOTE and '"' or "'"
  local j = find(s, quote, i + 1, true)
  if j ~= nil and byte(s, j - 1) ~= BACKSLASH then
    return j + 1
  end
  return skip_escaped_string(s, i, quote, j)
end

local function utf8(code)
  if code < 0x80 then
    return char(code)
  elseif code < 0x800 then
    return char(0xC0 + floor(code / 0x40), 0x80 + code % 0x40)
  elseif code < 0x10000 then
    return char(0xE0 + floor(code / 0x1000), 0x80 + floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
  end
  return char(
    0xF0 + floor(code / 0x40000),
    0x80 + floor(code / 0x1000) % 0x40,
    0x80 + floor(code / 0x40) % 0x40,
    0x80 + code % 0x40
  )
end

-- As the transcoder's parser decodes: \uXXXX (surrogate pairs joined), the one-letter
-- escapes, and any other escaped character standing for itself.
local function unescape(raw)
  local out, n, i = {}, 0, 1
  while true do
    local j = find(raw, "\\", i, true)
    n = n + 1
    if j == nil then
      out[n] = sub(raw, i)
      return concat(out)
    end
    out[n] = sub(raw, i, j - 1)
    local letter = sub(raw, j + 1, j + 1)
    n = n + 1
    if letter == "u" then
      local hex = sub(raw, j + 2, j + 5)
      if not find(hex, "^%x%x%x%x$") then
        malformed(j)
      end
      local code = tonumber(hex, 16)
      i = j + 6
      local low = code >= 0xD800 and code <= 0xDBFF and raw:match("^\\u(%x%x%x%x)", i)
      if low then
        local low_code = tonumber(low, 16)
        if low_code >= 0xDC00 and low_code <= 0xDFFF then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low_code - 0xDC00)
          i = i + 6
        end
      end
      out[n] = utf8(code)
    else
      out[n] = SIMPLE_ESCAPES[letter] or letter
      i = j + 2
    end
  end
end

-- An object key: a quoted or apostrophed string, or a bare word as the transcoder allows.
local function read_key(s, i)
  local first = byte(s, i)
  if first == QUOTE or first == APOSTROPHE then
    local after = skip_string(s, i)
    local key = sub(s, i + 1, after - 2)
    if find(key, "\\", 1, true) then
      key = unescape(key)
    end
    return key, after
  end
  if not WORD_START[first] then
    malformed(i)
  end
  local j = i + 1
  while WORD_BYTES[byte(s, j)] do
    j = j + 1
  end
  return sub(s, i, j - 1), j
end

local function expect_colon(s, i)
  i = skip_ws(s, i)
  if byte(s, i) ~= COLON then
    malformed(i)
  end
  return skip_ws(s, i + 1)
end

-- After a member or an element: returns the index of the next one, or of the closer.
local function after_item(s, i, closer)
  i = skip_ws(s, i)
  local c = byte(s, i)
  if c == COMMA then
    return skip_ws(s, i + 1)
  elseif c ~= closer then
    malformed(i)
  end
  return i
end

-- Any value whose content is not checked: a scalar, a free-form value, or a value of
-- the wrong JSON type for its field (the transcoder refuses those).
local function skip_value(s, i)
  local c = byte(s, i)
  if c == QUOTE or c == APOSTROPHE then
    return skip_string(s, i)
  end
  if c == O_BRACE or c == O_BRACKET then
    local depth, j = 0, i
    while true do
      local d = byte(s, j)
      if d == QUOTE or d == APOSTROPHE then
        j = skip_string(s, j)
      else
        if d == O_BRACE or d == O_BRACKET then
          depth = depth + 1
        elseif d == C_BRACE or d == C_BRACKET then
          depth = depth - 1
          if depth == 0 then
            return j + 1
          end
        elseif d == nil then
          malformed(i)
        end
        j = j + 1
      end
    end
  end
  local j = i
  while SCALAR_BYTES[byte(s, j)] do
    j = j + 1
  end
  if j == i then
    malformed(i)
  end
  return j
end

local check_object

local function push(segment)
  depth_of_path = depth_of_path + 1
  path[depth_of_path] = segment
end

local function deeper(depth, i)
  if depth >= MAX_DEPTH then
    fail("JSON_TOO_DEEP", i)
  end
  return depth + 1
end

local function check_element(message, s, i, depth)
  if byte(s, i) == O_BRACE then
    return check_object(MESSAGES[message], s, i, depth)
  end
  return skip_value(s, i)
end

-- The transcoder flattens arrays nested in a repeated field into its elements.
local function check_array(message, s, i, depth)
  depth = deeper(depth, i)
  i = skip_ws(s, i + 1)
  local index = 0
  while byte(s, i) ~= C_BRACKET do
    push(index)
    if byte(s, i) == O_BRACKET then
      i = check_array(message, s, i, depth)
    else
      i = check_element(message, s, i, depth)
    end
    depth_of_path = depth_of_path - 1
    index = index + 1
    i = after_item(s, i, C_BRACKET)
  end
  return i + 1
end

local function check_map(message, s, i, depth)
  depth = deeper(depth, i)
  i = skip_ws(s, i + 1)
  while byte(s, i) ~= C_BRACE do
    local key
    key, i = read_key(s, i)
    i = expect_colon(s, i)
    push("[" .. key .. "]")
    i = check_element(message, s, i, depth)
    depth_of_path = depth_of_path - 1
    i = after_item(s, i, C_BRACE)
  end
  return i + 1
end

-- spec = {kind, message index, cardinality}. A repeated field also takes a single
-- value, as the transcoder does.
local function check_value(spec, s, i, depth)
  if spec[1] ~= MESSAGE then
    return skip_value(s, i)
  end
  local cardinality, c = spec[3], byte(s, i)
  if cardinality == MAP then
    if c == O_BRACE then
      return check_map(spec[2], s, i, depth)
    end
    return skip_value(s, i)
  end
  if cardinality == REPEATED and c == O_BRACKET then
    return check_array(spec[2], s, i, depth)
  end
  return check_element(spec[2], s, i, depth)
end

check_object = function(fields, s, i, depth)
  depth = deeper(depth, i)
  i = skip_ws(s, i + 1)
  while byte(s, i) ~= C_BRACE do
    local key
    key, i = read_key(s, i)
    local spec = fields[key]
    if spec == nil then
      push(key)
      fail("UNKNOWN_FIELD")
    end
    i = expect_colon(s, i)
    push(key)
    i = check_value(spec, s, i, depth)
    depth_of_path = depth_of_path - 1
    i = after_item(s, i, C_BRACE)
  end
  return i + 1
end

local function check_body(root, s)
  depth_of_path = 0
  local i = skip_ws(s, 1)
  if i > #s then
    return
  end
  i = skip_ws(s, check_value(root, s, i, 0))
  if i <= #s then
    malformed(i)
  end
end

-- As the transcoder splits a path: no query, the custom verb as a last segment, no
-- trailing slashes.
local function normalized(path_header)
  local p = path_header
  local query = find(p, "?", 1, true)
  if query then
    p = sub(p, 1, query - 1)
  end
  local colon = find(p, ":[^:/]*$")
  if colon then
    p = sub(p, 1, colon - 1) .. "/" .. sub(p, colon + 1)
  end
  return (p:gsub("/+$", ""))
end

local function binding_for(method, path_header)
  local candidates = BINDINGS[method]
  if candidates == nil then
    return nil
  end
  local p = normalized(path_header)
  for k = 1, #candidates do
    local binding = candidates[k]
    if find(p, binding.pattern) then
      return binding
    end
  end
  return nil
end

local function is_grpc(content_type)
  -- What Envoy's gRPC filters take for gRPC, which the transcoder passes through.
  return content_type ~= nil
    and (content_type == "application/grpc" or sub(content_type, 1, 17) == "application/grpc+")
end

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    local length = c < 0x80 and 1 or c >= 0xC2 and c <= 0xDF and 2 or c >= 0xE0 and c <= 0xEF and 3
      or c >= 0xF0 and c <= 0xF4 and 4 or 0
    if length == 0 or i + length - 1 > n then
      return false
    end
    for k = i + 1, i + length - 1 do
      local d = byte(s, k)
      if d < 0x80 or d > 0xBF then
        return false
      end
    end
    -- No overlong forms, no surrogates (a lone \ud800 in a key decodes to one), nothing
    -- past U+10FFFF.
    local second = byte(s, i + 1)
    if
      (c == 0xE0 and second < 0xA0)
      or (c == 0xED and second > 0x9F)
      or (c == 0xF0 and second < 0x90)
      or (c == 0xF4 and second > 0x8F)
    then
      return false
    end
    i = i + length
  end
  return true
end

local function json_string(text)
  if not valid_utf8(text) then
    text = text:gsub("[\128-\255]", "?")
  end
  return '"'
    .. text:gsub('[%c"\\]', function(c)
      return format("\\u%04x", byte(c))
    end)
    .. '"'
end

local function field_path(prefix)
  local out = prefix
  for k = 1, depth_of_path do
    local segment = path[k]
    if type(segment) == "number" then
      out = out .. "[" .. segment .. "]"
    elseif sub(segment, 1, 1) == "[" then
      out = out .. segment
    elseif out == "" then
      out = segment
    else
      out = out .. "." .. segment
    end
  end
  if #out > MAX_REPORTED_PATH then
    out = sub(out, 1, MAX_REPORTED_PATH) .. "..."
  end
  return out
end

local ERROR_INFO = '{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"podmesh.dev","reason":'

-- The shape of the services' own INVALID_ARGUMENT answers (services/shared/errors.py).
local function answer(problem, prefix)
  if problem.reason == "UNKNOWN_FIELD" then
    local field = json_string(field_path(prefix))
    local message = json_string("invalid request: " .. field_path(prefix) .. ": unknown field")
    return '{"code":3,"message":' .. message .. ',"details":[' .. ERROR_INFO .. '"UNKNOWN_FIELD","metadata":{"field":'
      .. field .. '}},{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":'
      .. field .. ',"description":"unknown field"}]}]}'
  end
  local offset = tostring(problem.detail - 1)
  local message = problem.reason == "JSON_TOO_DEEP"
      and format("invalid request: the body nests more than %d levels deep", MAX_DEPTH)
    or "invalid request: the body is not valid JSON (at byte " .. offset .. ")"
  return '{"code":3,"message":' .. json_string(message) .. ',"details":[' .. ERROR_INFO .. '"'
    .. problem.reason .. '","metadata":{"offset":"' .. offset .. '"}}]}'
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type")) then
    return
  end
  local binding = binding_for(headers:get(":method"), headers:get(":path"))
  if binding == nil or binding.root == nil then
    return
  end
  local body = handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  local ok, problem = pcall(check_body, binding.root, body:getBytes(0, body:length()))
  if ok then
    return
  end
  if type(problem) ~= "table" then
    -- A fault of this script, not of the request: Envoy logs it and lets the request on.
    error(problem, 0)
  end
  handle:respond(
    { [":status"] = "400", ["content-type"] = "application/json" },
    answer(problem, binding.prefix)
  )
end
