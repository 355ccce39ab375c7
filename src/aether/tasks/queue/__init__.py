"""The durable task queue: one contract (``base``), two backends.

``SqlTaskQueue`` (the default, in the records database) is exported here;
``RedisTaskQueue`` lives in ``aether.tasks.queue.redis`` so that importing the
queue does not import the Redis client.
"""

from aether.tasks.queue.base import Backoff, NewTask, TaskQueue
from aether.tasks.queue.sql import SqlTaskQueue

__all__ = ["Backoff", "NewTask", "SqlTaskQueue", "TaskQueue"]
