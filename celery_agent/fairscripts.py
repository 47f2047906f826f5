"""The Lua scripts of fair order and quotas (:mod:`.fairorder` runs them): the shared library
(key templates, quota usage, whose turn it is), a run joining its user's waiting set, the gate a
delivery passes, and the wake that finds parked runs to send again.
"""

from __future__ import annotations

# Shared Lua: key templates, limits, usage and the pick of whose turn it is.
LIB = """
local T = cjson.decode(ARGV[1])
local limits = cjson.decode(ARGV[2])
local now, patience = tonumber(ARGV[3]), tonumber(ARGV[4])
local function key(t, q, u)
  local k = string.gsub(t, '{q}', q or '')
  k = string.gsub(k, '{u}', u or '')
  return k
end
local function limit_of(scope)
  local v = redis.call('HGET', T.quotas, scope)
  if v then return cjson.decode(v) end
  return limits[scope]
end
-- runs and GPUs that run now (overall and on queue q) of a user or project; stale entries go
local function usage(kind, name, q, skip)
  local runs, gpus, qruns, qgpus = 0, 0, 0, 0
  local hkey = key(T.active, kind, name)
  local all = redis.call('HGETALL', hkey)
  for i = 1, #all, 2 do
    local id, v = all[i], all[i + 1]
    if id ~= skip then
      if redis.call('EXISTS', key(T.claim, id)) == 1 then
        local rq, g = string.match(v, '^(.*) (%d+)$')
        g = tonumber(g) or 0
        runs, gpus = runs + 1, gpus + g
        if rq == q then qruns, qgpus = qruns + 1, qgpus + g end
      else
        redis.call('HDEL', hkey, id)
      end
    end
  end
  return runs, gpus, qruns, qgpus
end
-- why a run of kind/name wanting g GPUs on q may not start now (nil: it may)
local function over(kind, name, q, g, skip)
  if not name or name == '' then return nil end
  local runs, gpus, qruns, qgpus
  for _, scope in ipairs({kind .. ':' .. name, kind .. ':' .. name .. '@' .. q}) do
    local lim = limit_of(scope)
    if lim then
      if runs == nil then runs, gpus, qruns, qgpus = usage(kind, name, q, skip) end
      local r, gg, where = runs, gpus, ''
      if string.find(scope, '@', 1, true) then r, gg, where = qruns, qgpus, ' on ' .. q end
      if lim.runs and r + 1 > lim.runs then
        return string.format('%s %s at quota (%d/%d runs%s)', kind, name, r, lim.runs, where)
      end
      if lim.gpus and g > 0 and gg + g > lim.gpus then
        return string.format('%s %s at quota (%d/%d GPUs%s)', kind, name, gg, lim.gpus, where)
      end
    end
  end
  return nil
end
-- the scope of kind/name whose GPU quota is below g: a run wanting g GPUs can never start
local function beyond(kind, name, q, g)
  if not name or name == '' or g == 0 then return nil end
  for _, scope in ipairs({kind .. ':' .. name, kind .. ':' .. name .. '@' .. q}) do
    local lim = limit_of(scope)
    if lim and lim.gpus and g > lim.gpus then return scope, lim.gpus end
  end
  return nil
end
-- the first still-queued run waiting for user u on q (stale entries go), and its score
local function head(q, u)
  local wkey = key(T.wait, q, u)
  for _ = 1, 50 do
    local h = redis.call('ZRANGE', wkey, 0, 0, 'WITHSCORES')
    if #h == 0 then return nil end
    if redis.call('HGET', key(T.run, h[1]), 'state') == 'queued' then return h[1], tonumber(h[2]) end
    redis.call('ZREM', wkey, h[1])  -- (a parked one stays parked: the wake sends it to its end)
  end
  return nil
end
-- the GPUs a run whose record asks w (its gpus_wanted: '' not said, 'all', 'K' a count, '=K' K
-- named) holds on the worker deciding (T.gpus: its device count n and whether it is static;
-- none, as in the sweep: only what the run names or counts)
local function holds(w)
  local dev = T.gpus
  if dev and dev.n == 0 then return 0 end  -- (a worker bound to no GPU gives none)
  if not w or w == '' then return (dev and dev.static) and dev.n or 0 end
  if w == 'all' then return dev and dev.n or 0 end
  if string.sub(w, 1, 1) == '=' then return tonumber(string.sub(w, 2)) or 0 end
  if dev and dev.static then return dev.n end
  return tonumber(w) or 0
end
-- whether user u, with run id waiting, may start it now (run and GPU quotas of user and project)
local function free(q, u, id)
  local f = redis.call('HMGET', key(T.run, id), 'project', 'gpus_wanted')
  local g = holds(f[2])
  if over('user', u, q, g, '') then return false end
  return over('project', f[1], q, g, '') == nil
end
-- user u's waiting runs that are not parked leave the waiting set (they are not there to go)
local function forget(q, u)
  local wkey, pkey = key(T.wait, q, u), key(T.parked, q, u)
  for _, id in ipairs(redis.call('ZRANGE', wkey, 0, -1)) do
    if not redis.call('ZSCORE', pkey, id) then redis.call('ZREM', wkey, id) end
  end
  redis.call('HDEL', key(T.owed, q), u)
end
-- the user whose turn it is on q among those with a run waiting at rank <= rank (or any rank
-- when rank is nil), other than but (nil: none); returns user, pass
local function turn(q, rank, but)
  local users = key(T.users, q)
  local passes = key(T.pass, q)
  local owed = key(T.owed, q)
  local best, best_pass = nil, nil
  for _, u in ipairs(redis.call('SMEMBERS', users)) do
    if u ~= but then
      local id, score = head(q, u)
      if id == nil then
        if redis.call('ZCARD', key(T.parked, q, u)) == 0 then redis.call('SREM', users, u) end
        redis.call('HDEL', owed, u)
      elseif (rank == nil or math.floor(score / 1e11) <= rank) and free(q, u, id) then
        local since = tonumber(redis.call('HGET', owed, u) or now)
        if now - since > patience then  -- its turn came and its runs did not: stop waiting for
          forget(q, u)                   -- those still on their way; its parked ones stay
          id = head(q, u)
        end
        local p = tonumber(redis.call('HGET', passes, u) or '0')
        if id ~= nil and (best == nil or p < best_pass) then best, best_pass = u, p end
      end
    end
  end
  return best, best_pass
end
"""

# A run joins its user's waiting set. KEYS: users set, wait zset, pass hash. ARGV: run id, score,
# user, weights (JSON), wait zset template. Returns 1 when the run's turn in the round comes
# before the last waiting run of another user (it should not queue behind all of theirs), else 0.
ENQUEUE = """
local passes, user = KEYS[3], ARGV[3]
local weights = cjson.decode(ARGV[4])
local function pass_of(u) return tonumber(redis.call('HGET', passes, u) or '0') end
local waiting = redis.call('ZCARD', KEYS[2])
if waiting == 0 then
  local vt = tonumber(redis.call('HGET', passes, '*vtime') or '0')
  if pass_of(user) < vt then redis.call('HSET', passes, user, vt) end
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[1], user)
local turn = pass_of(user) + waiting / (weights[user] or 1)
for _, u in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if u ~= user then
    local n = redis.call('ZCARD', (string.gsub(ARGV[5], '{u}', u)))
    if n > 0 and pass_of(u) + (n - 1) / (weights[u] or 1) > turn then return 1 end
  end
end
return 0
"""

# The gate. ARGV 1-4: the library's; 5 run id, 6 user, 7 project, 8 queue, 9 rank, 10 weight,
# 11 GPUs, 12 claim token, 13 '1' when it rides on the claim's round trip (it then answers only
# for a live run whose claim the token just got, not cancelled, on the queue its record names;
# else {'skip', ...}: the delivery asks again alone once it knows more). Returns {verdict, reason
# or '', user, run to send again} (both '' when none): verdict 'admit', 'quota' (parked at a
# quota) or 'fair' (parked for another's turn); or {'never', scope, its GPU limit, ''} for a run
# wanting more GPUs than a quota ever allows.
GATE = (
    LIB
    + """
local id, user, project, q = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local rank, weight, g, token = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local rec = key(T.run, id)
local st = redis.call('HGET', rec, 'state')
if ARGV[13] == '1' then
  local live = st == 'queued' or st == 'preparing' or st == 'running'
  if not live or redis.call('GET', key(T.claim, id)) ~= token
      or redis.call('EXISTS', key(T.abort, id)) == 1 then return {'skip', '', '', ''} end
  local rq = redis.call('HGET', rec, 'queue')
  if rq and rq ~= '' then q = rq end
end
local function park(reason)
  local score = redis.call('ZSCORE', key(T.wait, q, user), id) or (now + (10 - rank) * 1e11)
  redis.call('ZADD', key(T.parked, q, user), score, id)
  redis.call('ZADD', key(T.wait, q, user), score, id)
  redis.call('SADD', key(T.users, q), user)
  redis.call('SADD', T.queues, q)
  redis.call('HSET', rec, 'waiting', reason)
  if redis.call('GET', key(T.claim, id)) == token then redis.call('DEL', key(T.claim, id)) end
end
local function admit()
  redis.call('ZREM', key(T.wait, q, user), id)
  redis.call('ZREM', key(T.parked, q, user), id)
  redis.call('HDEL', rec, 'waiting')
  local v = q .. ' ' .. g
  redis.call('HSET', key(T.active, 'user', user), id, v)
  if project ~= '' then redis.call('HSET', key(T.active, 'project', project), id, v) end
end
if st ~= 'queued' then admit() return {'admit', '', '', ''} end
for _, kind in ipairs({'user', 'project'}) do
  local scope, most = beyond(kind, kind == 'user' and user or project, q, g)
  if scope then return {'never', scope, tostring(most), ''} end
end
local reason = over('user', user, q, g, id) or over('project', project, q, g, id)
if reason then park(reason) return {'quota', reason, '', ''} end
if tonumber(redis.call('HGET', rec, 'attempt') or '0') == 0 then
  local passes = key(T.pass, q)
  local mine = tonumber(redis.call('HGET', passes, user) or '0')
  local other, other_pass = turn(q, rank, user)
  if other ~= nil and other_pass < mine then
    if not redis.call('HGET', key(T.owed, q), other) then
      redis.call('HSET', key(T.owed, q), other, now) end
    park('fair order: user ' .. other .. ' goes first')
    local swap = redis.call('ZRANGE', key(T.parked, q, other), 0, 0)
    return {'fair', 'user ' .. other .. ' goes first', other, swap[1] or ''}
  end
  redis.call('HSET', passes, user, mine + 1 / weight)
  if mine > tonumber(redis.call('HGET', passes, '*vtime') or '0') then
    redis.call('HSET', passes, '*vtime', mine) end
  redis.call('HDEL', key(T.owed, q), user)
end
admit()
if redis.call('SISMEMBER', T.queues, q) == 0 then return {'admit', '', '', ''} end
local next_user = turn(q, nil, nil)  -- (only a queue with parked runs has one to send again)
local refill = ''
if next_user ~= nil then
  refill = redis.call('ZRANGE', key(T.parked, q, next_user), 0, 0)[1] or ''
end
return {'admit', '', next_user or '', refill}
"""
)

# Parked runs to send again: on each queue with parked runs, up to ARGV[5] of the user whose turn
# it is and, when ARGV[6] is '1' (the sweep: it reads every parked run), those no longer queued (a
# cancelled one ends at its delivery). Returns a flat list queue, user, run id, ...
WAKE = (
    LIB
    + """
local batch, scan = tonumber(ARGV[5]), ARGV[6] == '1'
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', T.queues)) do
  local left = 0
  for _, u in ipairs(redis.call('SMEMBERS', key(T.users, q))) do
    local pkey = key(T.parked, q, u)
    if scan then
      for _, id in ipairs(redis.call('ZRANGE', pkey, 0, -1)) do
        if redis.call('HGET', key(T.run, id), 'state') ~= 'queued' then
          table.insert(out, q) table.insert(out, u) table.insert(out, id)
        end
      end
    end
    left = left + redis.call('ZCARD', pkey)
  end
  local u = turn(q, nil, nil)
  if u ~= nil then
    for _, id in ipairs(redis.call('ZRANGE', key(T.parked, q, u), 0, batch - 1)) do
      table.insert(out, q) table.insert(out, u) table.insert(out, id)
    end
  end
  if left == 0 then redis.call('SREM', T.queues, q) end
end
return out
"""
)
