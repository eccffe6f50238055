/**
 * The Redis store's state transitions, one Lua script each (BullMQ's rule): a script runs alone on the
 * server, so a crash or a lost connection can never leave half a transition. Each message transition
 * writes the message row, the device's queue, the history, the event log (with a cluster-wide INCR seq)
 * and PUBLISHes the device's wake-up, together.
 *
 * Every script takes ARGV[1] = key prefix, ARGV[2] = retention of large bodies (ms) after a message ends,
 * then its own arguments. Times and sizes arrive as decimal strings; JSON fragments are built by the caller
 * (detail, result) or stored at enqueue (`ev`, the message's event head), so no script formats a number.
 */
import { createHash } from 'node:crypto';
import { ALLOWED_FROM, FINAL_STATUSES, MessageStatus } from '../types.js';
import { WEBHOOK_ATTEMPTS_KEPT } from './keys.js';

export interface LuaScript {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
}

const luaSet = (xs: Iterable<string>): string => `{${[...xs].map((x) => `${x} = true`).join(', ')}}`;

const ALLOWED_LUA = `{${Object.values(MessageStatus)
  .map((to) => `${to} = ${luaSet(ALLOWED_FROM[to])}`)
  .join(', ')}}`;

/** The key names of keys.ts, rebuilt in Lua from the same prefix. */
const PREAMBLE = `
local P = ARGV[1]
local RETENTION = tonumber(ARGV[2])
local K = {
  device = function(n) return P .. 'dev:{' .. n .. '}' end,
  devices = P .. 'devices',
  deviceKeys = P .. 'devkey',
  tokens = P .. 'tokens',
  tokenHashes = P .. 'tokhash',
  message = function(id) return P .. 'msg:' .. id end,
  body = function(id) return P .. 'body:' .. id end,
  history = function(id) return P .. 'hist:' .. id end,
  queue = function(d) return P .. 'q:{' .. d .. '}' end,
  idempotency = P .. 'idem',
  deadlines = P .. 'due:deadline',
  expiries = P .. 'due:expiry',
  messageSeq = P .. 'seq:msg',
  messages = P .. 'msgs',
  eventSeq = P .. 'seq:event',
  events = P .. 'events',
  webhookCursors = P .. 'wh:cursor',
  webhookAttempts = function(t) return P .. 'wh:att:' .. t end,
  wake = function(d) return P .. 'wake:{' .. d .. '}' end,
}
local LIVE = ${luaSet(['queued', 'sent'])}
local FINAL = ${luaSet(FINAL_STATUSES)}
local ALLOWED = ${ALLOWED_LUA}

local function member(seq, id) return string.format('%016d', tonumber(seq)) .. ':' .. id end

local function refuse(code, text) return redis.error_reply(code .. ' ' .. text) end

-- Appends one event (seq from the cluster-wide counter) and wakes the device's subscribers.
local function appendEvent(typ, device, mid, sender, at, data)
  local seq = redis.call('INCR', K.eventSeq)
  local f = {'t', typ, 'd', device, 'a', at, 'j', data}
  if mid ~= '' then f[#f + 1] = 'm'; f[#f + 1] = mid end
  if sender ~= '' then f[#f + 1] = 's'; f[#f + 1] = sender end
  redis.call('XADD', K.events, seq .. '-0', unpack(f))
  local wake = '{"seq":' .. seq .. ',"type":"' .. typ .. '"'
  if mid ~= '' then wake = wake .. ',"id":' .. cjson.encode(mid) end
  redis.call('PUBLISH', K.wake(device), wake .. '}')
  return seq
end

-- One status change: row, history, queue and indexes, event, wake-up. 1 if applied, 0 if refused.
local function changeStatus(id, status, at, detail, result)
  local key = K.message(id)
  local cur = redis.call('HGET', key, 'status')
  local allowed = ALLOWED[status]
  if not cur or not allowed or not allowed[cur] then return 0 end
  redis.call('HSET', key, 'status', status, 'updatedAt', at)
  if result ~= '' then redis.call('HSET', key, 'result', result) end
  local m = redis.call('HMGET', key, 'to', 'from', 'seq', 'ev', 'blobKey')
  local h = '{"status":"' .. status .. '","at":' .. at
  if detail ~= '' then h = h .. ',"detail":' .. detail end
  redis.call('RPUSH', K.history(id), h .. '}')
  if not LIVE[status] then
    local mem = member(m[3], id)
    redis.call('ZREM', K.queue(m[1]), id)
    redis.call('ZREM', K.deadlines, mem)
    redis.call('ZREM', K.expiries, mem)
  end
  if FINAL[status] and m[5] then
    if RETENTION > 0 then redis.call('PEXPIRE', m[5], RETENTION) else redis.call('DEL', m[5]) end
  end
  local data = '{"message":' .. m[4] .. ',"status":"' .. status .. '"'
  if detail ~= '' then data = data .. ',"detail":' .. detail end
  appendEvent('message.' .. status, m[1], id, m[2], at, data .. '}}')
  return 1
end
`;

function script(name: string, body: string): LuaScript {
  const lua = PREAMBLE + body;
  return { name, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

export const scripts = {
  /** ARGV: name, publicKey|'', then field/value pairs. */
  createDevice: script(
    'createDevice',
    `
local name, pk = ARGV[3], ARGV[4]
if redis.call('EXISTS', K.device(name)) == 1 then return refuse('DW_DEVICE_EXISTS', 'createDevice ' .. name .. ': name taken') end
if pk ~= '' and redis.call('HEXISTS', K.deviceKeys, pk) == 1 then
  return refuse('DW_DEVICE_EXISTS', 'createDevice ' .. name .. ': public key bound to another device')
end
local f = {}
for i = 5, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', K.device(name), unpack(f))
redis.call('ZADD', K.devices, 0, name)
if pk ~= '' then redis.call('HSET', K.deviceKeys, pk, name) end
return 1
`,
  ),

  /** ARGV: name, publicKey, at. */
  enrollDevice: script(
    'enrollDevice',
    `
local name, pk, at = ARGV[3], ARGV[4], ARGV[5]
local key = K.device(name)
if redis.call('EXISTS', key) == 0 then return refuse('DW_DEVICE_NOT_FOUND', 'enrollDevice ' .. name .. ': no such device') end
local d = redis.call('HMGET', key, 'publicKey', 'enrollExpiresAt')
if d[1] then return refuse('DW_ENROLL_REFUSED', 'enrollDevice ' .. name .. ': already enrolled') end
if d[2] and tonumber(at) > tonumber(d[2]) then
  return refuse('DW_ENROLL_REFUSED', 'enrollDevice ' .. name .. ': enrollment secret expired')
end
if redis.call('HEXISTS', K.deviceKeys, pk) == 1 then
  return refuse('DW_ENROLL_REFUSED', 'enrollDevice ' .. name .. ': key bound to another device')
end
redis.call('HSET', key, 'publicKey', pk, 'enrolledAt', at)
redis.call('HDEL', key, 'enrollSecretHash', 'enrollExpiresAt')
redis.call('HSET', K.deviceKeys, pk, name)
return 1
`,
  ),

  /** ARGV: name, at. Removes the device, cancels its undelivered messages. 1 if it existed. */
  removeDevice: script(
    'removeDevice',
    `
local name, at = ARGV[3], ARGV[4]
local key = K.device(name)
local pk = redis.call('HGET', key, 'publicKey')
local existed = redis.call('DEL', key)
redis.call('ZREM', K.devices, name)
if pk then redis.call('HDEL', K.deviceKeys, pk) end
local ids = redis.call('ZRANGE', K.queue(name), 0, -1)
for _, id in ipairs(ids) do changeStatus(id, 'cancelled', at, '{"reason":"device removed"}', '') end
redis.call('DEL', K.queue(name))
return existed
`,
  ),

  /** ARGV: name, secret hash, expiresAt. Unbinds the key; 0 for an unknown device. */
  renewEnrollment: script(
    'renewEnrollment',
    `
local name = ARGV[3]
local key = K.device(name)
if redis.call('EXISTS', key) == 0 then return 0 end
local pk = redis.call('HGET', key, 'publicKey')
if pk then redis.call('HDEL', K.deviceKeys, pk) end
redis.call('HDEL', key, 'publicKey', 'enrolledAt')
redis.call('HSET', key, 'enrollSecretHash', ARGV[4], 'enrollExpiresAt', ARGV[5])
return 1
`,
  ),

  /** ARGV: name, lastSeen, handshakeTs|''. Raises, never lowers; an unknown device is a no-op. */
  touchDevice: script(
    'touchDevice',
    `
local name, seen, ts = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local key = K.device(name)
if redis.call('EXISTS', key) == 0 then return 0 end
local d = redis.call('HMGET', key, 'lastSeen', 'lastHandshakeTs')
if not d[1] or tonumber(d[1]) < seen then redis.call('HSET', key, 'lastSeen', ARGV[4]) end
if ts ~= '' and (not d[2] or tonumber(d[2]) < tonumber(ts)) then redis.call('HSET', key, 'lastHandshakeTs', ts) end
return 1
`,
  ),

  /** ARGV: name, agent version. An unknown device is a no-op. */
  setAgentVersion: script(
    'setAgentVersion',
    `
local key = K.device(ARGV[3])
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'agentVersion', ARGV[4])
return 1
`,
  ),

  /** ARGV: name, send-to glob ('' clears it). Returns 1, or 0 for an unknown device. */
  setSendTo: script(
    'setSendTo',
    `
local key = K.device(ARGV[3])
if redis.call('EXISTS', key) == 0 then return 0 end
if ARGV[4] == '' then redis.call('HDEL', key, 'sendTo') else redis.call('HSET', key, 'sendTo', ARGV[4]) end
return 1
`,
  ),

  /** ARGV: name, hash, token JSON. */
  createToken: script(
    'createToken',
    `
local name, hash, json = ARGV[3], ARGV[4], ARGV[5]
if redis.call('HEXISTS', K.tokens, name) == 1 then return refuse('DW_TOKEN_EXISTS', 'createToken ' .. name .. ': name taken') end
if redis.call('HEXISTS', K.tokenHashes, hash) == 1 then return refuse('DW_TOKEN_EXISTS', 'createToken ' .. name .. ': hash taken') end
redis.call('HSET', K.tokens, name, json)
redis.call('HSET', K.tokenHashes, hash, name)
return 1
`,
  ),

  /** ARGV: name. */
  removeToken: script(
    'removeToken',
    `
local name = ARGV[3]
local json = redis.call('HGET', K.tokens, name)
if not json then return 0 end
redis.call('HDEL', K.tokenHashes, cjson.decode(json).hash)
redis.call('HDEL', K.tokens, name)
return 1
`,
  ),

  /** ARGV: hash. The token JSON, or nil. */
  tokenByHash: script(
    'tokenByHash',
    `
local name = redis.call('HGET', K.tokenHashes, ARGV[3])
if not name then return false end
return redis.call('HGET', K.tokens, name)
`,
  ),

  /** ARGV: public key. The device's hash (flat), or an empty list. */
  deviceByKey: script(
    'deviceByKey',
    `
local name = redis.call('HGET', K.deviceKeys, ARGV[3])
if not name then return {} end
return redis.call('HGETALL', K.device(name))
`,
  ),

  /**
   * ARGV: idempotency field|'', id, to, from, filename, size, sha256, inline (1|0), bodyPath|'', key|'',
   * createdAt, deadlineAt|'', expiresAt|'', ev, body, blobKey|''.
   * Returns {1, seq} when stored, {0, existing message (flat hash)} for an idempotent repeat.
   */
  enqueue: script(
    'enqueue',
    `
local ifield, id, to, from = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local inline, bodyPath, ikey, createdAt = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local deadlineAt, expiresAt, ev, blobKey = ARGV[14], ARGV[15], ARGV[16], ARGV[18]
if ifield ~= '' then
  local existing = redis.call('HGET', K.idempotency, ifield)
  if existing then return {0, redis.call('HGETALL', K.message(existing))} end
end
local key = K.message(id)
if redis.call('EXISTS', key) == 1 then return refuse('DW_MESSAGE_EXISTS', 'enqueue ' .. id .. ': id already stored') end
if blobKey ~= '' then
  -- The body uploaded for this message now belongs to it: no more orphan expiry.
  if redis.call('PERSIST', blobKey) == 0 and redis.call('EXISTS', blobKey) == 0 then
    return refuse('DW_STORE_INVALID', 'enqueue ' .. id .. ': its body is not in Redis')
  end
end
local seq = redis.call('INCR', K.messageSeq)
local f = {'id', id, 'seq', seq, 'to', to, 'from', from, 'filename', ARGV[7], 'size', ARGV[8], 'sha256', ARGV[9],
  'inline', inline, 'status', 'queued', 'createdAt', createdAt, 'updatedAt', createdAt, 'overdue', '0', 'ev', ev}
if bodyPath ~= '' then f[#f + 1] = 'bodyPath'; f[#f + 1] = bodyPath end
if ikey ~= '' then f[#f + 1] = 'ikey'; f[#f + 1] = ikey end
if deadlineAt ~= '' then f[#f + 1] = 'deadlineAt'; f[#f + 1] = deadlineAt end
if expiresAt ~= '' then f[#f + 1] = 'expiresAt'; f[#f + 1] = expiresAt end
if blobKey ~= '' then f[#f + 1] = 'blobKey'; f[#f + 1] = blobKey end
if ARGV[20] == '1' then f[#f + 1] = 'sealed'; f[#f + 1] = '1' end
redis.call('HSET', key, unpack(f))
if inline == '1' then redis.call('SET', K.body(id), ARGV[17]) end
if ifield ~= '' then redis.call('HSET', K.idempotency, ifield, id) end
redis.call('ZADD', K.queue(to), seq, id)
redis.call('ZADD', K.messages, seq, id)
if deadlineAt ~= '' then redis.call('ZADD', K.deadlines, deadlineAt, member(seq, id)) end
if expiresAt ~= '' then redis.call('ZADD', K.expiries, expiresAt, member(seq, id)) end
local retryOf = ARGV[19]
if retryOf ~= '' then
  -- A retry: the new message names the old one; the old one's history says which message retried it.
  redis.call('RPUSH', K.history(id), '{"status":"queued","at":' .. createdAt .. ',"detail":{"retryOf":' .. cjson.encode(retryOf) .. '}}')
  local oldStatus = redis.call('HGET', K.message(retryOf), 'status')
  if oldStatus then
    redis.call('RPUSH', K.history(retryOf), '{"status":"' .. oldStatus .. '","at":' .. createdAt .. ',"detail":{"retriedAs":' .. cjson.encode(id) .. '}}')
  end
else
  redis.call('RPUSH', K.history(id), '{"status":"queued","at":' .. createdAt .. '}')
end
appendEvent('message.queued', to, id, from, createdAt, '{"message":' .. ev .. ',"status":"queued"}}')
return {1, seq}
`,
  ),

  /** ARGV: n, then n × (id, status, at, detail JSON|'', result JSON|''). Returns a 1/0 per change. */
  setStatus: script(
    'setStatus',
    `
local n = tonumber(ARGV[3])
local out = {}
for i = 0, n - 1 do
  local b = 4 + i * 5
  out[#out + 1] = changeStatus(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4])
end
return out
`,
  ),

  /** ARGV: id, at. 1 if flagged now. */
  markOverdue: script(
    'markOverdue',
    `
local id, at = ARGV[3], ARGV[4]
local key = K.message(id)
local m = redis.call('HMGET', key, 'status', 'overdue', 'seq', 'to', 'from', 'ev')
if not m[1] or not LIVE[m[1]] or m[2] == '1' then return 0 end
redis.call('HSET', key, 'overdue', '1', 'updatedAt', at)
redis.call('ZREM', K.deadlines, member(m[3], id))
appendEvent('message.overdue', m[4], id, m[5], at, '{"message":' .. m[6] .. ',"status":"overdue"}}')
return 1
`,
  ),

  /** ARGV: n, then n × (type, device, messageId|'', sender|'', at, data JSON). */
  appendEvents: script(
    'appendEvents',
    `
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local b = 4 + i * 6
  appendEvent(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
end
return n
`,
  ),

  /** ARGV: token, seq, attempt JSON, moves (1|0). */
  webhookAttempt: script(
    'webhookAttempt',
    `
local token, seq = ARGV[3], tonumber(ARGV[4])
redis.call('LPUSH', K.webhookAttempts(token), ARGV[5])
redis.call('LTRIM', K.webhookAttempts(token), 0, ${WEBHOOK_ATTEMPTS_KEPT - 1})
if ARGV[6] == '1' then
  local cur = tonumber(redis.call('HGET', K.webhookCursors, token) or '0')
  if seq > cur then redis.call('HSET', K.webhookCursors, token, ARGV[4]) end
end
return 1
`,
  ),

  /** ARGV: token, seq. Moves the cursor forward only. */
  webhookSkip: script(
    'webhookSkip',
    `
local token, seq = ARGV[3], tonumber(ARGV[4])
local cur = tonumber(redis.call('HGET', K.webhookCursors, token) or '0')
if seq > cur then redis.call('HSET', K.webhookCursors, token, ARGV[4]) end
return 1
`,
  ),

  /** ARGV: device, afterSeq, limit. Each pending message: {flat hash, inline body or nil}. */
  pending: script(
    'pending',
    `
local device, after, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', K.queue(device), '(' .. after, '+inf', 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HGETALL', K.message(id))
  local body = false
  if redis.call('HGET', K.message(id), 'inline') == '1' then body = redis.call('GET', K.body(id)) end
  out[#out + 1] = {h, body}
end
return out
`,
  ),

  /** ARGV: 'deadline'|'expiry', now, limit. Messages due strictly before now, oldest first (flat hashes). */
  due: script(
    'due',
    `
local index = ARGV[3] == 'deadline' and K.deadlines or K.expiries
local members = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, mem in ipairs(members) do
  out[#out + 1] = redis.call('HGETALL', K.message(string.sub(mem, 18)))
end
return out
`,
  ),

  /**
   * The console's message list. ARGV: beforeSeq|'', limit, scan, device|'', sender|'', statuses (comma
   * separated)|'', attention (1)|'', since|'', until|'', search|''. Walks at most `scan` messages newest
   * first; returns {matches (flat hashes), next seq|''}.
   */
  listMessages: script(
    'listMessages',
    `
local hi, limit, scan = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local device, sender, statuses, attention = ARGV[6], ARGV[7], ARGV[8], ARGV[9] == '1'
local since, untl, search = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local want = nil
if statuses ~= '' then
  want = {}
  for st in string.gmatch(statuses, '[^,]+') do want[st] = true end
end
local needle = string.lower(search)
local top = hi == '' and '+inf' or ('(' .. hi)
local ids = redis.call('ZREVRANGEBYSCORE', K.messages, top, '-inf', 'WITHSCORES', 'LIMIT', 0, scan)
local out = {}
for i = 1, #ids, 2 do
  local id = ids[i]
  local m = redis.call('HMGET', K.message(id), 'to', 'from', 'status', 'overdue', 'createdAt', 'filename')
  local ok = m[3] ~= false
  if ok and device ~= '' and m[1] ~= device then ok = false end
  if ok and sender ~= '' and m[2] ~= sender then ok = false end
  if ok and want and not want[m[3]] then ok = false end
  if ok and attention and not (m[3] == 'failed' or m[3] == 'rejected' or (m[4] == '1' and LIVE[m[3]])) then ok = false end
  if ok and since and tonumber(m[5]) < since then ok = false end
  if ok and untl and tonumber(m[5]) >= untl then ok = false end
  if ok and search ~= '' and id ~= search and not string.find(string.lower(m[6]), needle, 1, true) then ok = false end
  if ok then
    out[#out + 1] = redis.call('HGETALL', K.message(id))
    if #out == limit then return {out, ids[i + 1]} end
  end
end
if #ids == 2 * scan then return {out, ids[#ids]} end
return {out, ''}
`,
  ),
} as const;

export type ScriptName = keyof typeof scripts;
