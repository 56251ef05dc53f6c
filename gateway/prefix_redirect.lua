-- Podmesh's measurement prefix: GET|HEAD /e/{prefix}/{url-without-scheme} answers
-- 302 to https://{url-without-scheme}, query string kept. Counting happens after the
-- fact from the gRPC access log; nothing here waits on a service.

local MAX_PATH = 2048

local function answer(handle, status, headers)
  headers[":status"] = status
  handle:respond(headers, "")
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local method = headers:get(":method")
  if method ~= "GET" and method ~= "HEAD" then
    answer(handle, "405", { ["allow"] = "GET, HEAD" })
    return
  end
  local path = headers:get(":path") or ""
  if #path > MAX_PATH then
    answer(handle, "414", {})
    return
  end
  -- The prefix id is not checked: an unknown one still redirects (a listener never
  -- pays for a measurement mistake) and is left uncounted by analytics.
  local target = path:match("^/e/[^/?#]+/(.+)$")
  if target == nil then
    answer(handle, "400", {})
    return
  end
  -- Control characters, white space and backslashes would let the Location header
  -- carry another header or be read by browsers as another host; Envoy's codec
  -- refuses most of them already, and this holds whatever the codec allows.
  if target:find("[%c%s\\]") then
    answer(handle, "400", {})
    return
  end
  -- A URL pasted with its scheme keeps it; without one it is https.
  local scheme = "https"
  local given, rest = target:match("^([Hh][Tt][Tt][Pp][Ss]?):/+(.*)$")
  if given ~= nil then
    scheme = given:lower()
    target = rest
  end
  -- The host must be a host name or IPv4 address with an optional port: no user
  -- info (@), no empty host, no "javascript:" or other scheme posing as a host.
  local authority = target:match("^([^/?#]+)")
  if authority == nil
    or not (authority:match("^[%w][%w%-%.]*$") or authority:match("^[%w][%w%-%.]*:%d+$"))
  then
    answer(handle, "400", {})
    return
  end
  answer(handle, "302", {
    ["location"] = scheme .. "://" .. target,
    -- Every request must reach the gateway to be measured: no shared cache may keep it.
    ["cache-control"] = "private, no-store",
  })
end
