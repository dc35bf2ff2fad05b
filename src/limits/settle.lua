-- Settles a finished request. One key per entry in KEYS.
-- ARGV[1] = now (ms); then four values per entry: kind, a, b, c.
--   kind 1, rate adjust:  a = limit, b = period ms, c = units to add (negative refunds)
--   kind 2, release:      b = lease id
--   kind 3, spend:        a = amount, b = period end (ms)
-- Rate keys hold "tat/seen" (see check.lua); the later of `seen` and `now`
-- is the clock here too.
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local kind = tonumber(ARGV[at])
  local a, b, c = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if kind == 1 then
    local v = redis.call('GET', key)
    local tat, seen = nil, now
    if v then
      local slash = string.find(v, '/', 1, true)
      if slash then
        tat = tonumber(string.sub(v, 1, slash - 1))
        seen = math.max(tonumber(string.sub(v, slash + 1)), now)
      else
        tat = tonumber(v)
      end
    end
    if tat then
      tat = tat + c * (b / a)
      if tat > seen then
        redis.call('SET', key, string.format('%.3f/%d', tat, seen), 'PX', math.ceil(tat - seen) + 1000)
      else
        redis.call('DEL', key)
      end
    elseif c > 0 then
      tat = now + c * (b / a)
      redis.call('SET', key, string.format('%.3f/%d', tat, now), 'PX', math.ceil(tat - now) + 1000)
    end
  elseif kind == 2 then
    redis.call('ZREM', key, ARGV[at + 2])
  elseif kind == 3 then
    if a > 0 then
      redis.call('INCRBY', key, a)
      -- Kept a day past the period's end, counted from the gateway's clock
      -- like every time here: Redis's own clock may disagree with it.
      redis.call('PEXPIRE', key, math.max(b - now, 0) + 86400000)
    end
  end
end
return 1
