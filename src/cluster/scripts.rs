//! The Lua scripts hearken runs on Redis. Each step that touches several keys runs as
//! one script, so it is atomic: no other node sees half of it, and two survivors
//! reporting the same lost node cannot both do it. (The node and lease keys are built
//! inside the scripts, so this needs one Redis primary, not a sharded Redis Cluster.)

use std::sync::LazyLock;

use redis::Script;

/// Publish a batch of the node's outgoing items in order, each at most once.
///
/// KEYS: seq, stream, the node's conversations set. ARGV: channel, maxlen, seq ttl ms,
/// lease key prefix, node id, then per item: seq, kind (`s` started, `d` disconnected,
/// `r` release the lease), conversation id, payload. Items at or below the stored seq
/// were applied by an earlier try whose answer was lost. A disconnect of a
/// conversation no longer in the set was already reported by a survivor (this node had
/// been taken for lost): it is not published again. Returns {published, superseded}.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local hwm = tonumber(redis.call('GET', KEYS[1]) or '0')
local published, superseded = 0, 0
for i = 6, #ARGV, 4 do
  local seq = tonumber(ARGV[i])
  if seq > hwm then
    hwm = seq
    local kind, conv, payload = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if kind == 'r' then
      local lease = ARGV[4] .. conv
      if redis.call('GET', lease) == ARGV[5] then redis.call('DEL', lease) end
    else
      local go = true
      if kind == 's' then
        redis.call('SADD', KEYS[3], conv)
      else
        go = redis.call('SREM', KEYS[3], conv) == 1
      end
      if go then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', payload)
        redis.call('PUBLISH', ARGV[1], payload)
        published = published + 1
      else
        superseded = superseded + 1
      end
    end
  end
end
redis.call('SET', KEYS[1], hwm, 'PX', ARGV[3])
return {published, superseded}
"#,
    )
});

/// Take a conversation's lease: `SET NX PX`, or refresh it when this node holds it
/// already (a reconnect to the same node, which its registry supersedes locally).
///
/// KEYS: lease. ARGV: node id, ttl ms. Returns nil when taken, else the owner's id.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return false
end
return owner
"#,
    )
});

/// Renew the node's leases; take those that vanished (Redis restarted, or a lease
/// started while Redis was unreachable). KEYS: leases. ARGV: node id, ttl ms. Returns
/// the 1-based indexes of leases another node holds.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lost = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif not owner then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"#,
    )
});

/// Heartbeat. KEYS: alive, nodes. ARGV: node id, ttl ms, value. Returns 1 when the node
/// was not in the node set (its first beat, or a survivor had taken it for lost).
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return redis.call('SADD', KEYS[2], ARGV[1])
"#,
    )
});

/// Report every lost node: a node in the set whose heartbeat expired. For each of its
/// conversations publish (channel and stream) `connection_disconnected` with reason
/// `server_error` and `node_lost: true`, drop the lease if the lost node still holds
/// it, then forget the node. Atomic, so exactly one survivor reports each conversation.
///
/// ARGV: prefix, this node's id, channel, maxlen. Returns the number of events.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local prefix, me, channel, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nodes = prefix .. ':nodes'
local reported = 0
for _, node in ipairs(redis.call('SMEMBERS', nodes)) do
  local base = prefix .. ':node:' .. node
  if node ~= me and redis.call('EXISTS', base .. ':alive') == 0 then
    local t = redis.call('TIME')
    local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
    for _, conv in ipairs(redis.call('SMEMBERS', base .. ':conversations')) do
      local payload = '{"type":"connection_disconnected","conversation_id":"' .. conv ..
        '","timestamp_ms":' .. ms .. ',"reason":"server_error","node_id":"' .. node ..
        '","node_lost":true,"reported_by":"' .. me .. '"}'
      redis.call('XADD', channel, 'MAXLEN', '~', maxlen, '*', 'event', payload)
      redis.call('PUBLISH', channel, payload)
      local lease = prefix .. ':lease:' .. conv
      if redis.call('GET', lease) == node then redis.call('DEL', lease) end
      reported = reported + 1
    end
    redis.call('DEL', base .. ':conversations', base .. ':seq')
    redis.call('SREM', nodes, node)
  end
end
return reported
"#,
    )
});

/// Leave the cluster at shutdown. KEYS: alive, nodes, conversations, seq. ARGV: node
/// id. With conversations still listed (their disconnects could not be published) the
/// node only stops heartbeating, so a survivor reports them. Returns 1 when it left.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('DEL', KEYS[1])
if redis.call('SCARD', KEYS[3]) > 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
"#,
    )
});

/// Live nodes and their heartbeat values. KEYS: nodes. ARGV: prefix. Returns a flat
/// list: node id, value (false when its heartbeat expired), ...
pub static NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  table.insert(out, node)
  table.insert(out, redis.call('GET', ARGV[1] .. ':node:' .. node .. ':alive') or '')
end
return out
"#,
    )
});
