-- wrk script for bench/flood.py: POST /v1/stream with one point for a new series id per request,
-- ids <FLOOD_PREFIX>-<thread>-<n>, until every thread has sent its share of FLOOD_IDS; counts statuses.
-- Environment: FLOOD_IDS (ids in all), FLOOD_THREADS (wrk's -t), FLOOD_KEY (the flooding tenant's
-- API key), FLOOD_GROUP, FLOOD_PREFIX (default flood).
local threads = {}
local ids = tonumber(os.getenv("FLOOD_IDS") or "200000")
local key = os.getenv("FLOOD_KEY") or ""
local group = os.getenv("FLOOD_GROUP") or "default"
local prefix = os.getenv("FLOOD_PREFIX") or "flood"
local nthreads = tonumber(os.getenv("FLOOD_THREADS") or "1")

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  share = math.floor(ids / nthreads) + ((tid < ids % nthreads) and 1 or 0)
  sent, got, statuses = 0, 0, {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
end

function request()
  if sent >= share then wrk.thread:stop() end  -- its share sent (answers lost to errors not awaited)
  sent = sent + 1
  local body = string.format('{"id":"%s-%d-%d","values":[%d],"group":"%s"}', prefix, tid, sent, sent % 13, group)
  return wrk.format(nil, "/v1/stream", nil, body)
end

function response(status, headers, body)
  got = got + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status == 429 then retry_after = headers["retry-after"] or headers["Retry-After"] end
  -- its share sent: stop at the next answer (the few still in flight are not awaited; a connection
  -- whose answer never comes would otherwise keep wrk running until -d)
  if got >= share or sent >= share then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do total[code] = (total[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(total) do table.insert(parts, string.format('"%d": %d', code, n)) end
  io.write(string.format('FLOOD {"statuses": {%s}, "requests": %d, "seconds": %.2f, "errors": %d, ' ..
                         '"p50_ms": %.2f, "p99_ms": %.2f}\n', table.concat(parts, ", "), summary.requests,
                         summary.duration / 1e6, summary.errors.connect + summary.errors.read +
                         summary.errors.write + summary.errors.timeout,
                         latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
