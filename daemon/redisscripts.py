"""The Redis side of the fleet's work queue: key layout and Lua scripts.

Kept apart from :mod:`acquired.daemon.redisqueue` (the only module that imports redis)
so that each stays readable. Keys, for a job J under the prefix P (default ``acq``)::

    P:jobs                sorted set: job -> publish order
    P:job:J               hash: digest, manifest (JSON), next (shard ids handed out), complete
    P:job:J:stream        stream, one entry per shard {s: id, p: spec JSON, d: earlier
                          deliveries}; consumer group "workers"
    P:job:J:acked         set of done shard ids (counters are added once per shard)
    P:job:J:counters      hash: s:<status> -> samples, bytes -> bytes
    P:job:J:index         hash: shard id -> node that wrote it
    P:job:J:errors        hash: shard id -> last error
    P:job:J:dead          stream: dead letters {s, d, e}
    P:job:J:deadset       hash: shard id -> [deliveries, last error]
    P:job:J:failures      hash: shard id -> JSON list of that shard's failed samples
    P:job:J:retrylock     string with a TTL: the node re-feeding failures right now
    P:node:N              string with a TTL: node N's last heartbeat report

Each script is atomic on the server, which is what makes an ack count once, a renewal
apply only to the lease's holder, and a half-finished publication resumable.
"""

from __future__ import annotations

__all__ = ["ACK", "CREATE", "FAILURES", "GROUP", "NACK", "PUBLISH", "RENEW", "Keys"]

GROUP = "workers"

# ARGV: digest, manifest, now -> "new" | "same" | "conflict:<digest>"
CREATE = """
local d = redis.call('HGET', KEYS[1], 'digest')
if d then
  if d == ARGV[1] then return 'same' end
  return 'conflict:' .. d
end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'manifest', ARGV[2], 'next', 0,
           'complete', 0, 'created', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('XGROUP', 'CREATE', KEYS[3], 'workers', '0', 'MKSTREAM')
return 'new'
"""

# KEYS: meta, stream. ARGV: digest, first shard id, then one "id spec" line per shard
# (one argument: packing 2,000 arguments per chunk cost more than the XADDs).
# Returns -1 when added, else the shard id the job's next entry must have.
PUBLISH = """
if redis.call('HGET', KEYS[1], 'digest') ~= ARGV[1] then return -2 end
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next'))
if nxt ~= tonumber(ARGV[2]) then return nxt end
local n = 0
for id, spec in string.gmatch(ARGV[3], '(%d+) ([^\\n]+)') do
  redis.call('XADD', KEYS[2], '*', 's', id, 'p', spec, 'd', 0)
  n = n + 1
end
redis.call('HSET', KEYS[1], 'next', nxt + n)
return -1
"""

# KEYS: stream, acked, counters, index, deadset. ARGV: entry id, shard, node, then
# (field, increment) pairs. Counts the shard only the first time it is acked.
ACK = """
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[5], ARGV[2])
return 1
"""

# KEYS: stream, errors, dead stream, deadset, acked. ARGV: entry id, consumer ('' = any),
# error, requeue (1/0), max deliveries.
NACK = """
local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[1], ARGV[1], 1)
if #p == 0 or (ARGV[2] ~= '' and p[1][2] ~= ARGV[2]) then return 'stale' end
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
if #e == 0 then return 'stale' end
local f = e[1][2]
local shard, spec, carried = '', '', 0
for i = 1, #f, 2 do
  if f[i] == 's' then shard = f[i + 1]
  elseif f[i] == 'p' then spec = f[i + 1]
  elseif f[i] == 'd' then carried = tonumber(f[i + 1]) end
end
if redis.call('SISMEMBER', KEYS[5], shard) == 1 then return 'done' end
local deliveries = carried + p[1][4]
redis.call('HSET', KEYS[2], shard, ARGV[3])
if ARGV[4] == '1' and deliveries < tonumber(ARGV[5]) then
  redis.call('XADD', KEYS[1], '*', 's', shard, 'p', spec, 'd', deliveries)
  return 'queued'
end
redis.call('XADD', KEYS[3], '*', 's', shard, 'd', deliveries, 'e', ARGV[3])
redis.call('HSET', KEYS[4], shard, cjson.encode({deliveries, ARGV[3]}))
return 'dead'
"""

# KEYS: stream. ARGV: entry id, consumer. Resets the idle time only if still ours.
RENEW = """
local p = redis.call('XPENDING', KEYS[1], 'workers', ARGV[1], ARGV[1], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], 'workers', ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
"""

# KEYS: acked, failures. ARGV: shard, JSON list ('' = none). Ignored once done.
FAILURES = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if ARGV[2] == '' then redis.call('HDEL', KEYS[2], ARGV[1])
else redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""


class Keys:
    """The key names of one job under a prefix (see the module's docstring)."""

    def __init__(self, prefix: str, job: str) -> None:
        base = f"{prefix}:job:{job}"
        self.meta = base
        self.stream = f"{base}:stream"
        self.acked = f"{base}:acked"
        self.counters = f"{base}:counters"
        self.index = f"{base}:index"
        self.errors = f"{base}:errors"
        self.dead = f"{base}:dead"
        self.deadset = f"{base}:deadset"
        self.failures = f"{base}:failures"
        self.retry_lock = f"{base}:retrylock"
        self.shardfigs = f"{base}:shardfigs"  # hash: shard id -> its figures for the index

    def all(self) -> list[str]:
        """Every key of the job."""
        return [v for k, v in vars(self).items() if not k.startswith("_")]
