"""The run store's Lua scripts (:class:`.state.RunStore` runs them): each makes one change to a
run atomically with the check it depends on, and keeps the run counters and histograms
(:meth:`.keys.Keys.run_counts`, :meth:`.keys.Keys.run_histograms`) in the same call.
"""

from __future__ import annotations

from . import histograms

# Move a run to a new state unless it already ended; returns the state it had ("" if none).
# The fields come as one JSON object of strings (ARGV[4]): a run's end writes ~20 fields, and
# packing each as an argument of its own cost the worker ~0.1 ms of CPU. KEYS[2] is the run counters
# hash (:meth:`Keys.run_counts`): a run that ends counts once under its end state, an active run
# sent back to its queue under 'requeued' (the exporter serves them as Prometheus counters).
# KEYS[3] is the run histograms hash (:meth:`Keys.run_histograms`): a queued run that starts
# observes its wait (since it was submitted or last requeued), an active run that ends other than
# lost its duration (since it started), both under the run's queue.
TRANSITION = (
    histograms.lua_observe(histograms.RUN_DURATION, histograms.QUEUE_WAIT)
    + """
local ended = {succeeded=true, failed=true, aborted=true, timed_out=true, lost=true}
local old = redis.call('HGET', KEYS[1], 'state') or ''
if old == '' and ARGV[2] ~= '1' then return '' end
if ARGV[3] ~= '1' and ended[old] then return old end
local flat = {'state', ARGV[1]}
for name, value in pairs(cjson.decode(ARGV[4])) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
redis.call('HSET', KEYS[1], unpack(flat))
if ended[ARGV[1]] and not ended[old] then redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
elseif ARGV[1] == 'queued' and (old == 'preparing' or old == 'running') then
  redis.call('HINCRBY', KEYS[2], 'requeued', 1) end
if ARGV[1] == 'preparing' and old == 'queued' then
  local f = redis.call('HMGET', KEYS[1], 'queue', 'preparing_at', 'submitted_at', 'requeued_at')
  local since = math.max(tonumber(f[3]) or 0, tonumber(f[4]) or 0)
  if f[1] and tonumber(f[2]) and since > 0 then
    observe(KEYS[3], 'wait', f[1], tonumber(f[2]) - since) end
elseif ended[ARGV[1]] and ARGV[1] ~= 'lost' and (old == 'preparing' or old == 'running') then
  local f = redis.call('HMGET', KEYS[1], 'queue', ARGV[1] .. '_at', 'preparing_at')
  if f[1] and tonumber(f[2]) and tonumber(f[3]) then
    observe(KEYS[3], 'duration', f[1], tonumber(f[2]) - tonumber(f[3])) end
end
return old
"""
)
# Renew or release a claim only when it is still ours.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Take over a claim whose holder is known dead (compare-and-set on the holder).
STEAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 end
return 0
"""
# Put an active run whose claim expired back in the queue (or end it lost when its attempts are
# used up). Atomic with the claim check, so a runner that just claimed the run is never undone.
# ARGV: max attempts, now, error text. Returns 'claimed', 'ended', 'requeued' or 'lost'. The run
# counters (KEYS[3]) count the lost attempt, then the requeue or the run ended lost.
REQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'claimed' end
local st = redis.call('HGET', KEYS[1], 'state') or ''
if st ~= 'preparing' and st ~= 'running' then return 'ended' end
local lost = redis.call('HINCRBY', KEYS[1], 'lost_attempts', 1)
redis.call('HINCRBY', KEYS[3], 'lost_attempts', 1)
if lost < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'requeued_at', ARGV[2], 'last_error', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'requeued', 1)
  return 'requeued' end
redis.call('HSET', KEYS[1], 'state', 'lost', 'lost_at', ARGV[2], 'error', ARGV[3],
  'error_stage', 'run')
redis.call('HINCRBY', KEYS[3], 'lost', 1)
return 'lost'
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Record a queued run unless its id is taken: KEYS run record, runs index; ARGV submit time, run id,
# then field, value, ... One round trip, and no reader ever sees a record without its fields.
# KEYS[3], the run counters hash, counts it under 'submitted'; KEYS[4...], the runs' indexes by
# queue, user and tag (:meth:`.keys.Keys.runs_by`), get the id too.
CREATE = """
if redis.call('HSETNX', KEYS[1], 'state', 'queued') == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'submitted', 1)
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2]) end
return 1
"""

# Append a batch of log lines once: ARGV[1] names the writer (one attempt's output, or its agent
# notes), ARGV[2] the number of its lines before this batch, ARGV[3] the stream's MAXLEN, ARGV[4]
# the lines joined by newlines, ARGV[5] how many. KEYS[2] (:meth:`Keys.log_sent`) counts each
# writer's lines in the log: a batch sent again because its reply was lost (Redis went away after
# applying it) appends only the lines not in the log yet. Returns how many lines it appended.
APPEND_LOG = """
local first, count = tonumber(ARGV[2]), tonumber(ARGV[5])
local done = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local skip = done - first
if skip >= count then return 0 end
local text, at = ARGV[4], 1
for _ = 1, skip do at = string.find(text, '\\n', at, true) + 1 end
if at > 1 then text = string.sub(text, at) end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'l', text)
redis.call('HSET', KEYS[2], ARGV[1], first + count)
return count - math.max(skip, 0)
"""

# Append a batch of metrics once, as APPEND_LOG appends lines: ARGV[1] the writer (one attempt's
# metric tap), ARGV[2] how many metrics it appended before this batch, ARGV[3] the stream's
# MAXLEN, then name, value, step for each metric. KEYS[2] is the same counts hash as the log's.
APPEND_METRICS = """
local first, count = tonumber(ARGV[2]), (#ARGV - 3) / 3
local done = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local skip = math.max(done - first, 0)
for i = skip, count - 1 do
  local at = 4 + i * 3
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
             'n', ARGV[at], 'v', ARGV[at + 1], 's', ARGV[at + 2])
end
if first + count > done then redis.call('HSET', KEYS[2], ARGV[1], first + count) end
return math.max(count - skip, 0)
"""
