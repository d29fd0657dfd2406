-- wrk: POST /m365/sessions as fast as possible (broker token from the BROKER_TOKEN variable).
-- Counts non-200 answers, which must stay 0 (a 503 would mean the session cap was reached).
wrk.method = "POST"
wrk.path = "/m365/sessions"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BROKER_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"expected_email":"ana.silva@contoso.example"}'

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad = 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("bad")
  end
  io.write(string.format("NON200 %d\n", total))
end
