"""Lua scripts shared by the Redis adapters."""

# Delete KEYS[1] only if it still holds ARGV[1]: a lease is released only by its holder.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Extend KEYS[1]'s TTL to ARGV[2] seconds only if it still holds ARGV[1].
RENEW_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# A token bucket per key, in Redis' clock so every gateway process agrees: ARGV[1] tokens per
# second, ARGV[2] burst. Returns {1, 0} when a token was taken, else {0, ms until one is back}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1])
local at = tonumber(saved[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local taken = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {taken, wait}
"""

# Presence of one user, computed from their connections' expiries. KEYS: online set, away set,
# info hash, closed set (see events.keys): a report that arrives after its connection closed
# (a sweep in flight) must not bring it back. ARGV: op ("set", "leave", "reap" or "read"), connection id,
# the connection's state ("online"/"away") and how long ago it was last heard from (ms), and
# the TTL (ms). Time is Redis's own clock, so gateways' clocks never matter.
# Returns {changed (0/1), state, last_seen (ms or ""), at (µs), latest expiry (ms)}.
PRESENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op, conn, cstate, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
if op == 'set' and redis.call('ZSCORE', KEYS[4], conn) then
  op = 'reap'  -- closed already: only recompute
end
if op == 'set' then
  local beat = now - tonumber(ARGV[4])
  local mine, other = KEYS[1], KEYS[2]
  if cstate == 'away' then mine, other = KEYS[2], KEYS[1] end
  redis.call('ZREM', other, conn)
  redis.call('ZADD', mine, beat + ttl, conn)
  local seen = tonumber(redis.call('HGET', KEYS[3], 'seen') or '0')
  if beat > seen then redis.call('HSET', KEYS[3], 'seen', beat) end
elseif op == 'leave' then
  redis.call('ZREM', KEYS[1], conn)
  redis.call('ZREM', KEYS[2], conn)
  redis.call('HSET', KEYS[3], 'seen', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[4], now + ttl, conn)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
local live = '(' .. now
if op ~= 'read' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local state = 'offline'
if redis.call('ZCOUNT', KEYS[1], live, '+inf') > 0 then
  state = 'online'
elseif redis.call('ZCOUNT', KEYS[2], live, '+inf') > 0 then
  state = 'away'
end
local latest = 0
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) > latest then latest = tonumber(top[2]) end
end
local info = redis.call('HMGET', KEYS[3], 'state', 'last_seen', 'seen', 'at')
local prev = info[1] or 'offline'
local last_seen = info[2] or ''
if state == prev then
  return {0, state, last_seen, tonumber(info[4] or '0'), latest}
end
if state == 'offline' then
  -- the last device left (now), or went silent (its last activity)
  last_seen = info[3] or tostring(now)
end
if op == 'read' then
  return {0, state, last_seen, at, latest}
end
redis.call('HSET', KEYS[3], 'state', state, 'at', at, 'last_seen', last_seen)
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  if latest > 0 and redis.call('EXISTS', key) == 1 then redis.call('PEXPIREAT', key, latest + 1000) end
end
return {1, state, last_seen, at, latest}
"""
