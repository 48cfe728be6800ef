"""The asyncio Python SDK: ``raftmesh.aio.Client``, the same surface as ``raftmesh.Client`` on
``grpc.aio`` channels (README "asyncio SDK").

Every call is a coroutine; ``watch``, ``kv.watch`` and ``messages.subscribe`` are async
iterators; ``async with client.lock(...)`` holds a lock (renewed by an asyncio task). The
retries, failover, idempotency keys and stream resumption are the sync client's, not a
copy: both drive the same operations (``raftmesh.client._core``).
"""

from ._client import Client, KvClient, Lease, LockClient, LockContext, MessagesClient, Subscription

__all__ = ["Client", "KvClient", "Lease", "LockClient", "LockContext", "MessagesClient", "Subscription"]
