-- wrk script for the Ordo benchmark: the banking request mix of ordo-bench (bench/src/mix.rs).
--
-- Usage: wrk ... -s mix.lua URL -- DATA_DIR FIRST COUNT START_STEP
--   DATA_DIR/cycle.lua     the request cycle (generated from bench/src/mix.rs)
--   DATA_DIR/sessions.tsv  one session a line: bearer token, then the values of SessionVars::COLUMNS
--   FIRST, COUNT           the slice of sessions this run uses (split between wrk threads)
--   START_STEP             the cycle step of each session's first request
-- Request k of a thread goes to session (k mod n) of its slice at step START_STEP + floor(k / n),
-- exactly as the Rust generator does, so both tools send the same mix.
-- done() writes a JSON summary to $ORDO_WRK_OUT.

local COLUMNS = { "sub", "acct", "tx", "card", "payee", "payee2", "payee4", "transfer", "phone", "phoneq",
  "email", "refresh", "device", "amount" }
local HOST = "api.bank.example"

-- setup() runs in the main Lua state; it hands each thread its index and the thread count
-- (globals `id` and `nthreads` in the thread's own state).
local all_threads = {}

function setup(thread)
  thread:set("id", #all_threads)
  table.insert(all_threads, thread)
  for _, t in ipairs(all_threads) do
    t:set("nthreads", #all_threads)
  end
end

local cycle, sessions, n, k, start_step

function init(args)
  local dir, first, count = args[1], tonumber(args[2]), tonumber(args[3])
  start_step = tonumber(args[4]) or 0
  cycle = dofile(dir .. "/cycle.lua")
  local per = math.floor(count / nthreads)
  local lo = first + id * per
  local hi = lo + per - 1
  sessions, n, k = {}, 0, 0
  local index = 0
  for line in io.lines(dir .. "/sessions.tsv") do
    if index > hi then break end
    if index >= lo then
      local fields = {}
      for f in line:gmatch("[^\t]+") do fields[#fields + 1] = f end
      local vars = {}
      for i, name in ipairs(COLUMNS) do vars[name] = fields[i + 1] end
      n = n + 1
      sessions[n] = { auth = "Bearer " .. fields[1], vars = vars }
    end
    index = index + 1
  end
  if n == 0 then error("no sessions in slice " .. lo .. ".." .. hi) end
end

function request()
  local s = sessions[(k % n) + 1]
  local step = cycle[((start_step + math.floor(k / n)) % #cycle) + 1]
  k = k + 1
  local path = step.path:gsub("{{(%w+)}}", s.vars)
  local headers = { ["Host"] = HOST, ["Authorization"] = s.auth, ["User-Agent"] = "ordo-bench/1 (bank-app)" }
  local body = nil
  if step.body then
    body = step.body:gsub("{{(%w+)}}", s.vars)
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(step.method, path, headers, body)
end

function done(summary, latency, requests)
  local out = os.getenv("ORDO_WRK_OUT")
  if not out then return end
  local f = assert(io.open(out, "w"))
  f:write(string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.duration, summary.requests, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
  f:close()
end
