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
