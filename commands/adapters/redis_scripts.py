"""Lua scripts shared by the Redis adapters."""

# Delete KEYS[1] only if it still holds ARGV[1]: a lease is released only by its holder.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Extend KEYS[1]'s TTL to ARGV[2] milliseconds only if it still holds ARGV[1].
RENEW_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Presence, for a batch of reports: each user's state computed from their connections'
# expiries, on Redis's own clock (gateways' clocks never matter).
# KEYS[1] is the reaper's index of one presence shard's live users (user -> their newest
# expiry); then four keys per report, of a user of that shard: the user's online set, away set,
# info hash and closed set (see events.keys). The closed set is there because a report that
# arrives after its connection closed (a sweep in flight) must not bring it back.
# ARGV[1] is the TTL (ms); then five values per report: user id, op ("set", "leave", "reap" or
# "read"), connection id, the connection's state ("online"/"away") and how long ago it was last
# heard from (ms).
# Returns, flat, {index (1-based), changed (0/1), state, last_seen (ms or ""), at (µs)} for each
# report that changed its user's state, and for every "read". A transition's time is strictly
# past the user's previous one, so watchers can order them.
# All the keys of a call share the shard's hash tag, hence one Redis Cluster slot.
PRESENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, (#KEYS - 1) / 4 do
  local online, away, info, closed = KEYS[i * 4 - 2], KEYS[i * 4 - 1], KEYS[i * 4], KEYS[i * 4 + 1]
  local user, op, conn, cstate = ARGV[i * 5 - 3], ARGV[i * 5 - 2], ARGV[i * 5 - 1], ARGV[i * 5]
  if op == 'set' and redis.call('ZSCORE', closed, conn) then
    op = 'reap'  -- closed already: only recompute
  end
  if op == 'set' then
    local beat = now - tonumber(ARGV[i * 5 + 1])
    local mine, other = online, away
    if cstate == 'away' then mine, other = away, online end
    redis.call('ZREM', other, conn)
    redis.call('ZADD', mine, beat + ttl, conn)
    local seen = tonumber(redis.call('HGET', info, 'seen') or '0')
    if beat > seen then redis.call('HSET', info, 'seen', beat) end
  elseif op == 'leave' then
    redis.call('ZREM', online, conn)
    redis.call('ZREM', away, conn)
    redis.call('HSET', info, 'seen', now)
    redis.call('ZREMRANGEBYSCORE', closed, '-inf', now)
    redis.call('ZADD', closed, now + ttl, conn)
    redis.call('PEXPIRE', closed, ttl)
  end
  if op ~= 'read' then
    redis.call('ZREMRANGEBYSCORE', online, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', away, '-inf', now)
  end
  local live = '(' .. now
  local state = 'offline'
  if redis.call('ZCOUNT', online, live, '+inf') > 0 then
    state = 'online'
  elseif redis.call('ZCOUNT', away, live, '+inf') > 0 then
    state = 'away'
  end
  local latest = 0
  for _, key in ipairs({online, away}) do
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if top[2] and tonumber(top[2]) > latest then latest = tonumber(top[2]) end
  end
  if op ~= 'read' then
    -- the sets outlive their newest connection, however long the user stays
    for _, key in ipairs({online, away}) do
      if latest > 0 and redis.call('EXISTS', key) == 1 then redis.call('PEXPIREAT', key, latest + 1000) end
    end
    if state == 'offline' then
      redis.call('ZREM', KEYS[1], user)
    else
      redis.call('ZADD', KEYS[1], latest, user)
    end
  end
  local h = redis.call('HMGET', info, 'state', 'last_seen', 'seen', 'at')
  local prev, last_seen, prev_at = h[1] or 'offline', h[2] or '', tonumber(h[4] or '0')
  if state == prev then
    if op == 'read' then
      table.insert(out, i); table.insert(out, 0); table.insert(out, state)
      table.insert(out, last_seen); table.insert(out, prev_at)
    end
  else
    if state == 'offline' then
      -- the last device left (now), or went silent (its last activity)
      last_seen = h[3] or tostring(now)
    end
    local changed, when = 0, at
    if op ~= 'read' then
      changed, when = 1, math.max(at, prev_at + 1)
      redis.call('HSET', info, 'state', state, 'at', when, 'last_seen', last_seen)
    end
    table.insert(out, i); table.insert(out, changed); table.insert(out, state)
    table.insert(out, last_seen); table.insert(out, when)
  end
end
return out
"""
