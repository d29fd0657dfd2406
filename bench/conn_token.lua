-- wrk script for bench/connections.sh: every request asks for the access token of one kept
-- connection (CONN_ID, with its credential CONN_CREDENTIAL), whose token is fresh, and
-- response() counts answers other than 200; done() prints `NON200 n`.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non200 = 0
  wrk.method = "POST"
  wrk.path = "/connections/" .. os.getenv("CONN_ID") .. "/token"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("CONN_CREDENTIAL")
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = "{}"
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + t:get("non200")
  end
  io.write(string.format("NON200 %d\n", n))
end
