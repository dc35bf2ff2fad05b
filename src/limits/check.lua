-- One admission check, atomically: every rule is evaluated first, and only
-- when all allow are their charges written. One key per rule in KEYS.
-- ARGV[1] = now (ms); then four values per rule: kind, a, b, c.
--   kind 1, rate (GCRA):  a = limit, b = period ms, c = cost
--   kind 2, concurrency:  a = limit, b = lease id, c = lease end (ms)
--   kind 3, budget:       a = limit, b = period end (ms), c = unused
-- Returns {allowed (1|0), first denied rule (1-based, 0 = none),
--          then per rule: remaining, reset ms, retry-after ms}.
-- A rate key holds "tat/seen": GCRA's theoretical arrival time and the latest
-- clock that wrote it. A check whose clock reads earlier (a replica that read
-- it before waiting, or whose clock is behind) counts as arriving at `seen`,
-- so arrival order, not clock order, decides who gets the last unit.
local function read_rate(key, now)
  local v = redis.call('GET', key)
  if not v then return now, now end
  local slash = string.find(v, '/', 1, true)
  if not slash then
    local tat = tonumber(v)
    return math.max(tat, now), now
  end
  local seen = math.max(tonumber(string.sub(v, slash + 1)), now)
  return math.max(tonumber(string.sub(v, 1, slash - 1)), seen), seen
end
local now = tonumber(ARGV[1])
local out = {1, 0}
local writes = {}
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local kind = tonumber(ARGV[at])
  local a, b, c = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local remaining, reset, retry = 0, 0, 0
  local denied = false
  if kind == 1 then
    local interval = b / a
    local tat, now = read_rate(key, now)
    local new_tat = tat + c * interval
    if new_tat - now > b then
      denied = true
      retry = new_tat - now - b
      if c > a then retry = -1 end
      remaining = math.floor((b - (tat - now)) / interval)
      reset = tat - now
    else
      table.insert(writes, {1, key, new_tat, math.ceil(new_tat - now) + 1000, now})
      remaining = math.floor((b - (new_tat - now)) / interval)
      reset = new_tat - now
    end
  elseif kind == 2 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local count = redis.call('ZCARD', key)
    if count >= a then
      denied = true
      retry = 1000
    else
      table.insert(writes, {2, key, c, ARGV[at + 2], c - now + 1000})
      remaining = a - count - 1
    end
  elseif kind == 3 then
    local spent = tonumber(redis.call('GET', key) or 0)
    reset = b - now
    if spent >= a then
      denied = true
      retry = b - now
    else
      remaining = a - spent
    end
  end
  if denied and out[1] == 1 then
    out[1] = 0
    out[2] = i
  end
  table.insert(out, math.floor(remaining))
  table.insert(out, math.floor(reset))
  table.insert(out, math.floor(retry))
end
if out[1] == 1 then
  for _, w in ipairs(writes) do
    if w[1] == 1 then
      redis.call('SET', w[2], string.format('%.3f/%d', w[3], w[5]), 'PX', w[4])
    else
      redis.call('ZADD', w[2], w[3], w[4])
      if redis.call('PTTL', w[2]) < w[5] then
        redis.call('PEXPIRE', w[2], w[5])
      end
    end
  end
end
return out
