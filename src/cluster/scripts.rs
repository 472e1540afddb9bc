//! The Lua scripts the members run in Redis (with EVALSHA, through `redis::Script`): each
//! one step done atomically on the server, with the server's clock (`TIME`), so members'
//! clocks never matter.

/// Books a lease. KEYS: tokens hash, pace hash, paused flag. ARGV: ceiling in messages
/// per second (0: none), turns, ceiling in bytes per second (0: none), bytes.
/// Returns {wait in µs (-1: paused), the rate in milli-messages/s (0: unlimited), the
/// pace's reason, the member that set it}.
pub(super) const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {-1, 0, '', ''}
end
local rate = tonumber(ARGV[1])
local p = redis.call('HMGET', KEYS[2], 'rate', 'reason', 'member')
local shared = tonumber(p[1] or '')
if shared and shared > 0 and (rate == 0 or shared < rate) then rate = shared end
local bps = tonumber(ARGV[3])
local k = redis.call('HMGET', KEYS[1], 'tat', 'btat')
local tat = tonumber(k[1] or '0')
local btat = tonumber(k[2] or '0')
local start = now
if rate > 0 and tat > start then start = tat end
if bps > 0 and btat > start then start = btat end
if rate > 0 then
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', start + tonumber(ARGV[2]) * 1000000 / rate))
end
if bps > 0 then
  redis.call('HSET', KEYS[1], 'btat', string.format('%.0f', start + tonumber(ARGV[4]) * 1000000 / bps))
end
redis.call('EXPIRE', KEYS[1], 3600)
return {math.floor(start - now), math.floor(rate * 1000), p[2] or '', p[3] or ''}
"#;

/// Gives back turns booked and not used. KEYS: tokens hash, pace hash. ARGV: ceiling,
/// turns, bytes ceiling, bytes (as for TAKE).
pub(super) const GIVE_BACK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local shared = tonumber(redis.call('HGET', KEYS[2], 'rate') or '')
if shared and shared > 0 and (rate == 0 or shared < rate) then rate = shared end
local bps = tonumber(ARGV[3])
local k = redis.call('HMGET', KEYS[1], 'tat', 'btat')
if rate > 0 and k[1] then
  local tat = math.max(now, tonumber(k[1]) - tonumber(ARGV[2]) * 1000000 / rate)
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
end
if bps > 0 and k[2] then
  local btat = math.max(now, tonumber(k[2]) - tonumber(ARGV[4]) * 1000000 / bps)
  redis.call('HSET', KEYS[1], 'btat', string.format('%.0f', btat))
end
return 1
"#;

/// A heartbeat, stamped with the server's clock. KEYS: member hash, members set.
/// ARGV: member id, TTL, then field/value pairs.
pub(super) const BEAT: &str = r#"
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[1], 'at', now, unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], now, ARGV[1])
-- Members whose record expired are forgotten.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
return now
"#;

/// Claims copies before they go to the store. KEYS: one claim per recipient. ARGV: the
/// claiming ledger, the claim's expiry (ms). Returns per key '' (this ledger's to deliver)
/// or the value another ledger left (`held|LEDGER` or `delivered|LEDGER`).
pub(super) const CLAIM: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, 'held|' .. ARGV[1], 'PX', ARGV[2])
    out[i] = ''
  else
    local bar = string.find(v, '|', 1, true) or 0
    if string.sub(v, bar + 1) == ARGV[1] then
      if string.sub(v, 1, 5) == 'held|' then redis.call('PEXPIRE', key, ARGV[2]) end
      out[i] = ''
    else
      out[i] = v
    end
  end
end
return out
"#;
