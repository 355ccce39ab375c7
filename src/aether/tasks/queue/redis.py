"""The task queue on Redis (optional backend): every transition is one Lua script.

A script runs atomically on the server, so a claim, a completion, a cancellation
or an expiry is seen whole or not at all, however many clients race. A batch
(``submit_many``, ``claim_many``, ``complete_many``) is one call of the same
script as its one-task case, which is the batch of one: one round trip and one
atomic step for the whole batch. Scripts answer a task as one JSON string
(``task_json``), which the client decodes in C, rather than as an ``HGETALL``
reply that redis-py's pure-Python parser would read field by field.

Keys (``P`` is the prefix, ``{aether}:q:`` by default; the braces are a hash tag
so that on Redis Cluster every key lives in one slot and every script may touch
them all):

- ``P t:<id>``           hash: the task (times as epoch seconds, JSON payload/result)
- ``P seq``              counter: submission order
- ``P idem:<tenant>``    hash: idempotency key -> task id (set only if absent)
- ``P tenant:<tenant>``  sorted set: task ids by seq (for ``list``)
- ``P ready:<q,n,d>``    sorted set per (queue, node or any, driver or any): claimable
  ids scored ``(100 - priority) * 2^45 + seq``, so the lowest score is the highest
  priority, first submitted (a task keeps its score across retries)
- ``P delayed``          sorted set: scheduled and retry ids by ``run_at``; a claim
  first moves every due one into its ready set
- ``P active``           sorted set: claimed ids by lease expiry (what ``expire`` scans)
- ``P stats``, ``P stats:<tenant>``  hashes: how many tasks are in each state
- ``P events``           stream: the event log, one entry per state change, appended by
  the script that makes the change; entry ids are ``<position>-0`` with the position
  from the counter ``P evseq``, so a reader resumes by an integer

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an
acknowledged submission survives a crash of the Redis server; with ``everysec``
(Redis's default when AOF is on) up to a second of writes can be lost; with RDB
snapshots only, everything since the last snapshot. Replication is asynchronous,
so a failover can lose acknowledged writes too. Use the SQL backend where no
task may ever be lost, or run Redis with AOF ``always``.
"""

from __future__ import annotations

import builtins
import functools
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis.asyncio as aioredis

from aether.errors import AetherError, BadRequestError, ConflictError, NotFoundError
from aether.model.tasks import TaskEvent, TaskOut, TaskState
from aether.tasks.queue.base import (
    LEASE_EXPIRED,
    Backoff,
    BackoffFn,
    Completion,
    NewTask,
    ReadyLag,
    conflict_message,
    event_error,
    event_node,
    now_or,
    utc,
    validate,
)

__all__ = ["RedisTaskQueue"]

READY_LAG_SAMPLE = 1000  # ready ids per ready set ``ready_lag`` looks at
_CANDIDATE_CACHE = 1024  # claimer shapes (node, drivers, queues) whose ready sets are kept

# Every script gets the prefix as ARGV[1] and a hash-tagged key as KEYS[1] (for routing).
_COMMON = """
local P = ARGV[1]
local function tkey(id) return P .. 't:' .. id end
local function move(tenant, from, to)
  if from then
    redis.call('HINCRBY', P .. 'stats', from, -1)
    redis.call('HINCRBY', P .. 'stats:' .. tenant, from, -1)
  end
  redis.call('HINCRBY', P .. 'stats', to, 1)
  redis.call('HINCRBY', P .. 'stats:' .. tenant, to, 1)
end
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
-- the task at key k as one JSON object of its hash's strings: the client decodes one
-- string (in C) instead of parsing every field of an HGETALL reply
local function task_json(k)
  local flat, h = redis.call('HGETALL', k), {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return cjson.encode(h)
end
-- at most 512 bytes of s, cut at a UTF-8 character boundary
local function short(s)
  if #s <= 512 then return s end
  local n = 512
  while n > 0 do
    local b = string.byte(s, n + 1)
    if b < 128 or b >= 192 then break end
    n = n - 1
  end
  return string.sub(s, 1, n)
end
-- append the change that left task id as it is now (previous: its state before, or nil)
local function logged(id, previous, now)
  local f = redis.call('HMGET', tkey(id), 'tenant', 'type', 'state', 'queue', 'priority',
    'attempts', 'claimed_by', 'error')
  local entry = {'task', id, 'tenant', f[1], 'type', f[2], 'state', f[3], 'queue', f[4],
    'priority', f[5], 'attempt', f[6], 'ts', now}
  if previous then
    table.insert(entry, 'previous')
    table.insert(entry, previous)
  end
  if f[7] then
    table.insert(entry, 'claimed_by')
    table.insert(entry, f[7])
  end
  if f[8] then
    table.insert(entry, 'error')
    table.insert(entry, short(f[8]))
  end
  local position = redis.call('INCR', P .. 'evseq')
  redis.call('XADD', P .. 'events', position .. '-0', unpack(entry))
  redis.call('RPUSH', P .. 'tev:' .. id, position)  -- the task's own history
  if FINAL[f[3]] then  -- when each task finished, by state, kept a day (stats since)
    for _, key in ipairs({P .. 'done:' .. f[3], P .. 'done:' .. f[3] .. ':' .. f[1]}) do
      redis.call('ZADD', key, now, id)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', tonumber(now) - 86400)
    end
  end
end
"""

# Store one new task, or find the one its idempotency key already names: the task's key
# and whether it is new. ``node``, ``driver`` and ``key`` are '' when unset; ``rk`` is the
# ready set it belongs in.
_SUBMIT_ONE = """
local function submit_one(tenant, now, id, key, run_at, ttype, payload, queue, priority,
                          max_retry, timeout, node, driver, rk, trace)
  if key ~= '' then
    local existing = redis.call('HGET', P .. 'idem:' .. tenant, key)
    if existing then return tkey(existing), false end
    redis.call('HSET', P .. 'idem:' .. tenant, key, id)
  end
  local seq = redis.call('INCR', P .. 'seq')
  local score = string.format('%.0f', (100 - tonumber(priority)) * 35184372088832 + seq)
  local state = 'scheduled'
  if tonumber(run_at) <= tonumber(now) then state = 'pending' end
  local k = tkey(id)
  redis.call('HSET', k, 'id', id, 'tenant', tenant, 'seq', seq, 'score', score,
    'type', ttype, 'payload', payload, 'queue', queue, 'priority', priority,
    'max_retry', max_retry, 'timeout', timeout, 'run_at', run_at, 'state', state,
    'attempts', 0, 'created_at', now, 'updated_at', now, 'rk', rk)
  if key ~= '' then redis.call('HSET', k, 'idempotency_key', key) end
  if node ~= '' then redis.call('HSET', k, 'node', node) end
  if driver ~= '' then redis.call('HSET', k, 'driver', driver) end
  if trace ~= '' then redis.call('HSET', k, 'traceparent', trace) end
  redis.call('ZADD', P .. 'tenant:' .. tenant, seq, id)
  if state == 'pending' then
    redis.call('ZADD', rk, score, id)
  else
    redis.call('ZADD', P .. 'delayed', run_at, id)
  end
  move(tenant, nil, state)
  logged(id, nil, now)
  return k, true
end
"""

# ARGV: P, tenant, now, then 13 values per task (``_submit_row``): id, idempotency key or '',
#       run_at, type, payload, queue, priority, max_retry, timeout, node or '', driver or '',
#       ready key, traceparent or ''. Answers in order: 0 for a new task (the caller
#       knows it whole), or the task (``task_json``) an idempotency key named (earlier,
#       or earlier in this batch).
_SUBMIT = """
local tenant, now = ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 13 do
  local k, new = submit_one(tenant, now, unpack(ARGV, i, i + 12))
  if new then out[#out + 1] = 0 else out[#out + 1] = task_json(k) end
end
return out
"""

# Claiming: move every due delayed task into its ready set, pick the best ready ids by
# score across the claimer's ready sets, and take each.
_CLAIM_PARTS = """
local function promote(now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now)) do
    local f = redis.call('HMGET', tkey(id), 'rk', 'score')
    redis.call('ZADD', f[1], f[2], id)
    redis.call('ZREM', P .. 'delayed', id)
  end
end
-- the (at most limit) ready ids with the lowest scores in the sets keys[first..]: the
-- lowest `limit` of each set, merged (a score is unique: it ends in the task's seq)
local function best_ready(keys, first, limit)
  local found = {}
  for i = first, #keys do
    local r = redis.call('ZRANGE', keys[i], 0, limit - 1, 'WITHSCORES')
    for j = 1, #r, 2 do found[#found + 1] = {tonumber(r[j + 1]), r[j], keys[i]} end
  end
  table.sort(found, function(a, b) return a[1] < b[1] end)
  local best = {}
  for i = 1, math.min(limit, #found) do best[i] = found[i] end
  return best
end
local function take(id, rk, worker, now, lease)
  redis.call('ZREM', rk, id)
  local k = tkey(id)
  local f = redis.call('HMGET', k, 'state', 'tenant')
  redis.call('HINCRBY', k, 'attempts', 1)
  redis.call('HSET', k, 'state', 'active', 'claimed_by', worker, 'lease', lease,
    'started_at', now, 'updated_at', now)
  redis.call('ZADD', P .. 'active', lease, id)
  move(f[2], f[1], 'active')
  logged(id, f[1], now)
  return task_json(k)
end
"""

# ARGV: P, worker, now, lease expiry, limit, candidate ready keys...; the claimed tasks
# (``task_json``) in claim order
_CLAIM = """
local worker, now, lease, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
promote(now)
local out = {}
for _, pick in ipairs(best_ready(ARGV, 6, limit)) do
  out[#out + 1] = take(pick[2], pick[3], worker, now, lease)
end
return out
"""

# ARGV: P, ids...; each task (``task_json``), '{}' for an id no task has
_GET = """
local out = {}
for i = 2, #ARGV do out[#out + 1] = task_json(tkey(ARGV[i])) end
return out
"""

# ARGV: P, id, worker, now, lease expiry
_HEARTBEAT = """
local id, worker, now, lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local f = redis.call('HMGET', tkey(id), 'state', 'claimed_by')
if f[1] ~= 'active' or f[2] ~= worker then return 0 end
redis.call('HSET', tkey(id), 'lease', lease, 'updated_at', now)
redis.call('ZADD', P .. 'active', lease, id)
return 1
"""

# Complete one task for worker (if attempt is not '', only while that attempt holds it):
# {'ok', task_json}, {'conflict', task_json} (left unchanged) or {'notfound'}.
_COMPLETE_ONE = """
local function complete_one(id, worker, now, attempt, result)
  local k = tkey(id)
  local f = redis.call('HMGET', k, 'state', 'claimed_by', 'tenant', 'attempts')
  if not f[1] then return {'notfound'} end
  if f[1] ~= 'active' or f[2] ~= worker or (attempt ~= '' and f[4] ~= attempt) then
    return {'conflict', task_json(k)}
  end
  redis.call('ZREM', P .. 'active', id)
  redis.call('HSET', k, 'state', 'succeeded', 'result', result, 'finished_at', now,
    'updated_at', now)
  redis.call('HDEL', k, 'lease', 'error')
  move(f[3], 'active', 'succeeded')
  logged(id, 'active', now)
  return {'ok', task_json(k)}
end
"""

# ARGV: P, worker, now, then per completion: id, attempt or '', result JSON; the answers
# of complete_one in order
_COMPLETE = """
local worker, now = ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  out[#out + 1] = complete_one(ARGV[i], worker, now, ARGV[i + 1], ARGV[i + 2])
end
return out
"""

# ARGV: P, id, worker, now, error, retryable '1'/'0', attempts the caller saw, retry run_at
_FAIL = """
local id, worker, now, retryable = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local k = tkey(id)
local f = redis.call('HMGET', k, 'state', 'claimed_by', 'attempts', 'max_retry', 'tenant')
if not f[1] then return {'notfound'} end
if f[1] ~= 'active' or f[2] ~= worker or f[3] ~= ARGV[7] then
  return {'conflict', task_json(k)}
end
redis.call('ZREM', P .. 'active', id)
local to
if retryable == '1' and tonumber(f[3]) <= tonumber(f[4]) then
  to = 'retry'
  redis.call('HSET', k, 'run_at', ARGV[8])
  redis.call('ZADD', P .. 'delayed', ARGV[8], id)
else
  if retryable == '1' then to = 'dead' else to = 'failed' end
  redis.call('HSET', k, 'finished_at', now)
end
redis.call('HSET', k, 'state', to, 'error', ARGV[5], 'updated_at', now)
redis.call('HDEL', k, 'lease')
move(f[5], 'active', to)
logged(id, 'active', now)
return {'ok', task_json(k)}
"""

# ARGV: P, id, tenant, now
_CANCEL = """
local id, tenant, now = ARGV[2], ARGV[3], ARGV[4]
local k = tkey(id)
local f = redis.call('HMGET', k, 'state', 'tenant', 'rk')
if not f[1] or f[2] ~= tenant then return {'notfound'} end
if f[1] == 'cancelled' then return {'ok', task_json(k)} end
if FINAL[f[1]] then return {'conflict', task_json(k)} end
redis.call('ZREM', f[3], id)
redis.call('ZREM', P .. 'delayed', id)
redis.call('ZREM', P .. 'active', id)
redis.call('HSET', k, 'state', 'cancelled', 'finished_at', now, 'updated_at', now)
redis.call('HDEL', k, 'lease')
move(tenant, f[1], 'cancelled')
logged(id, f[1], now)
return {'ok', task_json(k)}
"""

# ARGV: P, now, error
_EXPIRE = """
local now = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now)
for _, id in ipairs(ids) do
  local k = tkey(id)
  local f = redis.call('HMGET', k, 'attempts', 'max_retry', 'tenant', 'rk', 'score')
  redis.call('ZREM', P .. 'active', id)
  local to = 'retry'
  if tonumber(f[1]) > tonumber(f[2]) then
    to = 'dead'
    redis.call('HSET', k, 'finished_at', now)
  else
    redis.call('HSET', k, 'run_at', now)
    redis.call('ZADD', f[4], f[5], id)
  end
  redis.call('HSET', k, 'state', to, 'error', ARGV[3], 'updated_at', now)
  redis.call('HDEL', k, 'lease')
  move(f[3], 'active', to)
  logged(id, 'active', now)
end
return #ids
"""


def _ts(value: float) -> str:
    """An epoch timestamp as Redis stores and compares it (repr keeps every digit)."""
    return repr(float(value))


@functools.lru_cache(maxsize=4096)
def _ready_key(prefix: str, queue: str, node: str | None, driver: str | None) -> str:
    """The ready set of the tasks of ``queue`` pinned to ``node`` needing ``driver``."""
    return f"{prefix}ready:{json.dumps([queue, node, driver], separators=(',', ':'))}"


@dataclass(frozen=True, slots=True)
class _SubmitRow:
    """One spec as the submit script takes it, and the task it makes if it is new."""

    args: tuple[str, ...]
    task: TaskOut


def _submit_row(spec: NewTask, now: str, prefix: str) -> _SubmitRow:
    """The script's arguments for ``spec`` and the task it stores if its key is new: built
    here from the same strings the script stores, so it equals what ``get`` reads back
    (and the script need not send the task back)."""
    task_id = uuid.uuid4().hex
    payload = json.dumps(spec.payload)
    run_at = now if spec.run_at is None else _ts(spec.run_at)
    timeout = _ts(spec.timeout)
    args = (
        task_id,
        spec.idempotency_key or "",
        run_at,
        spec.type,
        payload,
        spec.queue,
        str(spec.priority),
        str(spec.max_retry),
        timeout,
        spec.node or "",
        spec.driver or "",
        _ready_key(prefix, spec.queue, spec.node, spec.driver),
        spec.traceparent or "",
    )
    created = utc(float(now))
    task = TaskOut(
        id=task_id,
        type=spec.type,
        payload=json.loads(payload),
        queue=spec.queue,
        priority=spec.priority,
        max_retry=spec.max_retry,
        timeout=float(timeout),
        run_at=utc(float(run_at)),
        idempotency_key=spec.idempotency_key,
        state=TaskState.SCHEDULED if float(run_at) > float(now) else TaskState.PENDING,
        attempts=0,
        result=None,
        error=None,
        node=spec.node,
        claimed_by=None,
        created_at=created,
        updated_at=created,
        started_at=None,
        finished_at=None,
        traceparent=spec.traceparent,
    )
    return _SubmitRow(args, task)


def _when(value: str | None) -> datetime | None:
    return None if value is None else utc(float(value))


def _out(h: dict[str, str]) -> TaskOut:
    """The task whose hash is ``h`` (``HGETALL``, or a script's ``task_json`` decoded)."""
    result = h.get("result")
    return TaskOut(
        id=h["id"],
        type=h["type"],
        payload=json.loads(h["payload"]),
        queue=h["queue"],
        priority=int(h["priority"]),
        max_retry=int(h["max_retry"]),
        timeout=float(h["timeout"]),
        run_at=utc(float(h["run_at"])),
        idempotency_key=h.get("idempotency_key"),
        state=TaskState(h["state"]),
        attempts=int(h["attempts"]),
        result=None if result is None else json.loads(result),
        error=h.get("error"),
        node=h.get("node"),
        claimed_by=h.get("claimed_by"),
        created_at=utc(float(h["created_at"])),
        updated_at=utc(float(h["updated_at"])),
        started_at=_when(h.get("started_at")),
        finished_at=_when(h.get("finished_at")),
        traceparent=h.get("traceparent"),
    )


def _event(entry_id: str, h: dict[str, str]) -> TaskEvent:
    """A stream entry of the event log, with the same rules as the SQL backend's rows."""
    state = TaskState(h["state"])
    previous = TaskState(h["previous"]) if "previous" in h else None
    return TaskEvent(
        position=int(entry_id.partition("-")[0]),
        task_id=h["task"],
        tenant_id=h["tenant"],
        task_type=h["type"],
        state=state,
        previous=previous,
        queue=h["queue"],
        priority=int(h["priority"]),
        attempt=int(h["attempt"]),
        node=event_node(state, previous, h.get("claimed_by")),
        error=event_error(state, h.get("error")),
        ts=float(h["ts"]),
    )


class RedisTaskQueue:
    """``TaskQueue`` on a Redis server (``redis://host:port/db``); tested with Redis 7."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "{aether}:q:",
        backoff: BackoffFn | None = None,
    ) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix
        self.backoff: BackoffFn = backoff if backoff is not None else Backoff()
        self._submit = self.redis.register_script(_COMMON + _SUBMIT_ONE + _SUBMIT)
        self._claim = self.redis.register_script(_COMMON + _CLAIM_PARTS + _CLAIM)
        self._get = self.redis.register_script(_COMMON + _GET)
        self._heartbeat = self.redis.register_script(_COMMON + _HEARTBEAT)
        self._complete = self.redis.register_script(_COMMON + _COMPLETE_ONE + _COMPLETE)
        self._fail = self.redis.register_script(_COMMON + _FAIL)
        self._cancel = self.redis.register_script(_COMMON + _CANCEL)
        self._expire = self.redis.register_script(_COMMON + _EXPIRE)
        self._candidates: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}

    def _candidate_keys(
        self, node: str, drivers: Collection[str], queues: Sequence[str]
    ) -> list[str]:
        """The ready sets a claimer may take from (worked out once per claimer's shape)."""
        shape = (node, tuple(drivers), tuple(queues))
        keys = self._candidates.get(shape)
        if keys is None:
            if len(self._candidates) >= _CANDIDATE_CACHE:
                self._candidates.clear()
            keys = self._candidates[shape] = [
                _ready_key(self.prefix, queue, pinned, driver)
                for queue in dict.fromkeys(queues)
                for pinned in (node, None)
                for driver in [*dict.fromkeys(drivers), None]
            ]
        return keys

    async def _run(self, script: Any, *args: str | int) -> Any:
        return await script(keys=[self.prefix + "seq"], args=[self.prefix, *args])

    # -- submit and read -----------------------------------------------------

    async def submit(self, tenant_id: str, spec: NewTask, *, now: float | None = None) -> TaskOut:
        [made] = await self.submit_many(tenant_id, [spec], now=now)
        return made

    async def submit_many(
        self, tenant_id: str, specs: Sequence[NewTask], *, now: float | None = None
    ) -> builtins.list[TaskOut]:
        """One script call for the batch: every spec is validated first, so the script
        (atomic on the server) stores them all; a Lua error half-way (which only a bug
        could cause) would not roll back what it had written."""
        for spec in specs:
            validate(spec)
        if not specs:
            return []
        now = now_or(now)
        stamp = _ts(now)
        rows = [_submit_row(spec, stamp, self.prefix) for spec in specs]
        args = [value for row in rows for value in row.args]
        replies = await self._run(self._submit, tenant_id, stamp, *args)
        return [
            row.task if reply == 0 else _out(json.loads(reply))
            for row, reply in zip(rows, replies, strict=True)
        ]

    async def get(self, task_id: str, tenant_id: str | None = None) -> TaskOut:
        [found] = await self._run(self._get, task_id)
        h = json.loads(found)
        if not h or (tenant_id is not None and h["tenant"] != tenant_id):
            raise NotFoundError(f"task {task_id} not found")
        return _out(h)

    async def get_many(self, task_ids: Collection[str]) -> dict[str, TaskOut]:
        if not task_ids:
            return {}
        replies = await self._run(self._get, *task_ids)
        found = (json.loads(reply) for reply in replies)
        return {h["id"]: _out(h) for h in found if h}

    async def list(
        self,
        tenant_id: str,
        *,
        state: TaskState | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[TaskOut]:
        """Newest first, filtered here page by page (O(tasks scanned); fine for the API)."""
        if limit < 1:
            raise BadRequestError("limit must be at least 1")
        top = "+inf"
        if before is not None:
            fields = await self.redis.hmget(self.prefix + "t:" + before, ["seq", "tenant"])
            seq, tenant = cast(builtins.list[str | None], fields)
            if seq is None or tenant != tenant_id:
                raise NotFoundError(f"task {before} not found")
            top = f"({seq}"
        index = self.prefix + "tenant:" + tenant_id
        page = max(limit, 100)
        found: builtins.list[TaskOut] = []
        offset = 0
        while len(found) < limit:
            ids = cast(
                builtins.list[str],
                await self.redis.zrevrangebyscore(index, top, "-inf", start=offset, num=page),
            )
            if not ids:
                break
            offset += len(ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hgetall(self.prefix + "t:" + task_id)
                rows = cast(builtins.list[dict[str, str]], await pipe.execute())
            for row in rows:
                if not row:
                    continue
                if (
                    (state is not None and row["state"] != state)
                    or (type is not None and row["type"] != type)
                    or (queue is not None and row["queue"] != queue)
                ):
                    continue
                found.append(_out(row))
                if len(found) == limit:
                    break
        return found

    # -- claims --------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        *,
        node: str,
        drivers: Collection[str],
        queues: Sequence[str],
        lease: float,
        now: float | None = None,
    ) -> TaskOut | None:
        claimed = await self.claim_many(
            worker, node=node, drivers=drivers, queues=queues, lease=lease, limit=1, now=now
        )
        return claimed[0] if claimed else None

    async def claim_many(
        self,
        worker: str,
        *,
        node: str,
        drivers: Collection[str],
        queues: Sequence[str],
        lease: float,
        limit: int,
        now: float | None = None,
    ) -> builtins.list[TaskOut]:
        if not queues or limit < 1:
            return []
        now = now_or(now)
        candidates = self._candidate_keys(node, drivers, queues)
        replies = await self._run(
            self._claim, worker, _ts(now), _ts(now + lease), limit, *candidates
        )
        return [_out(json.loads(reply)) for reply in replies]

    async def heartbeat(
        self, task_id: str, worker: str, lease: float, *, now: float | None = None
    ) -> bool:
        now = now_or(now)
        held = await self._run(self._heartbeat, task_id, worker, _ts(now), _ts(now + lease))
        return bool(held)

    @staticmethod
    def _answer(
        task_id: str, worker: str, reply: Sequence[Any], attempt: int | None = None
    ) -> TaskOut:
        if reply[0] == "notfound":
            raise NotFoundError(f"task {task_id} not found")
        task = _out(json.loads(reply[1]))
        if reply[0] == "conflict":
            raise ConflictError(conflict_message(task, worker, attempt))
        return task

    async def complete(
        self, task_id: str, worker: str, result: dict[str, Any], *, now: float | None = None
    ) -> TaskOut:
        [answer] = await self.complete_many(worker, [Completion(task_id, result)], now=now)
        if isinstance(answer, AetherError):
            raise answer
        return answer

    async def complete_many(
        self, worker: str, results: Sequence[Completion], *, now: float | None = None
    ) -> builtins.list[TaskOut | AetherError]:
        if not results:
            return []
        args: builtins.list[str] = []
        for done in results:
            attempt = "" if done.attempt is None else str(done.attempt)
            args += (done.task_id, attempt, json.dumps(done.result))
        replies = await self._run(self._complete, worker, _ts(now_or(now)), *args)
        answers: builtins.list[TaskOut | AetherError] = []
        for done, reply in zip(results, replies, strict=True):
            try:
                answers.append(self._answer(done.task_id, worker, reply, done.attempt))
            except (ConflictError, NotFoundError) as refused:
                answers.append(refused)
        return answers

    async def fail(
        self,
        task_id: str,
        worker: str,
        error: str,
        *,
        retryable: bool = True,
        now: float | None = None,
    ) -> TaskOut:
        now = now_or(now)
        # The delay depends on the attempt count, which only a claim changes and a claim
        # needs the task not active: so the count read here holds while ``worker`` holds it,
        # and the script re-checks it anyway.
        current = await self.get(task_id)
        if current.state != TaskState.ACTIVE or current.claimed_by != worker:
            raise ConflictError(conflict_message(current, worker))
        retry = retryable and current.attempts <= current.max_retry
        retry_at = now + self.backoff(current.attempts) if retry else now
        reply = await self._run(
            self._fail,
            task_id,
            worker,
            _ts(now),
            error,
            "1" if retryable else "0",
            str(current.attempts),
            _ts(retry_at),
        )
        return self._answer(task_id, worker, reply)

    async def cancel(self, task_id: str, tenant_id: str, *, now: float | None = None) -> TaskOut:
        reply = await self._run(self._cancel, task_id, tenant_id, _ts(now_or(now)))
        if reply[0] == "notfound":
            raise NotFoundError(f"task {task_id} not found")
        task = _out(json.loads(reply[1]))
        if reply[0] == "conflict":
            raise ConflictError(f"task {task_id} already {task.state}; it cannot be cancelled")
        return task

    async def expire(self, now: float | None = None) -> int:
        return int(await self._run(self._expire, _ts(now_or(now)), LEASE_EXPIRED))

    async def ready_lag(self, now: float | None = None) -> builtins.list[ReadyLag]:
        """From the first ``READY_LAG_SAMPLE`` ids of each ready set (the next to be
        claimed) and of the due delayed ones: a floor of the count, the oldest of those."""
        now = now_or(now)
        ids: set[str] = set()
        async for key in self.redis.scan_iter(match=self.prefix + "ready:*", count=500):
            ids.update(
                cast(builtins.list[str], await self.redis.zrange(key, 0, READY_LAG_SAMPLE - 1))
            )
        due = await self.redis.zrangebyscore(
            self.prefix + "delayed", "-inf", _ts(now), start=0, num=READY_LAG_SAMPLE
        )
        ids.update(cast(builtins.list[str], due))
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(self.prefix + "t:" + task_id, "tenant", "queue", "run_at", "state")
            rows = cast(builtins.list[builtins.list[str | None]], await pipe.execute())
        groups: dict[tuple[str, str], tuple[int, float]] = {}
        for tenant, queue, run_at, state in rows:
            if tenant is None or queue is None or run_at is None or state == "active":
                continue
            count, oldest = groups.get((tenant, queue), (0, float(run_at)))
            groups[(tenant, queue)] = (count + 1, min(oldest, float(run_at)))
        return [
            ReadyLag(tenant, queue, count, oldest)
            for (tenant, queue), (count, oldest) in sorted(groups.items())
        ]

    async def stats(
        self, tenant_id: str | None = None, *, since: float | None = None
    ) -> dict[TaskState, int]:
        suffix = "" if tenant_id is None else ":" + tenant_id
        raw = cast(dict[str, str], await self.redis.hgetall(self.prefix + "stats" + suffix))
        counts = dict.fromkeys(TaskState, 0)
        for state, count in raw.items():
            counts[TaskState(state)] = int(count)
        if since is not None:
            for state in TaskState:
                if state.final:
                    key = f"{self.prefix}done:{state.value}{suffix}"
                    counts[state] = int(await self.redis.zcount(key, since, "+inf"))
        return counts

    # -- the event log -------------------------------------------------------

    async def events_after(self, position: int, limit: int) -> builtins.list[TaskEvent]:
        entries = cast(
            builtins.list[tuple[str, dict[str, str]]],
            await self.redis.xrange(
                self.prefix + "events", min=f"{position + 1}-0", max="+", count=limit
            ),
        )
        return [_event(entry_id, fields) for entry_id, fields in entries]

    async def history(self, task_id: str) -> builtins.list[TaskEvent]:
        positions = cast(
            builtins.list[str], await self.redis.lrange(self.prefix + "tev:" + task_id, 0, -1)
        )
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            for position in positions:
                pipe.xrange(self.prefix + "events", min=f"{position}-0", max=f"{position}-0")
            found = cast(
                builtins.list[builtins.list[tuple[str, dict[str, str]]]], await pipe.execute()
            )
        # an entry the trim has dropped is skipped (its XRANGE finds nothing)
        return [_event(eid, fields) for entries in found for eid, fields in entries]

    async def events_head(self) -> int:
        return int(cast(str | None, await self.redis.get(self.prefix + "evseq")) or 0)

    async def trim_events(self, keep: int) -> int:
        cut = await self.events_head() - keep
        if cut <= 0:
            return 0
        return int(
            await self.redis.xtrim(self.prefix + "events", minid=f"{cut + 1}-0", approximate=False)
        )

    async def close(self) -> None:
        await self.redis.aclose()
