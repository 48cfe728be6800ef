from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_PENDING: _ClassVar[TaskStatus]
    TASK_STATUS_READY: _ClassVar[TaskStatus]
    TASK_STATUS_RUNNING: _ClassVar[TaskStatus]
    TASK_STATUS_SUCCEEDED: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED: _ClassVar[TaskStatus]
    TASK_STATUS_CANCELLED: _ClassVar[TaskStatus]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_PENDING: TaskStatus
TASK_STATUS_READY: TaskStatus
TASK_STATUS_RUNNING: TaskStatus
TASK_STATUS_SUCCEEDED: TaskStatus
TASK_STATUS_FAILED: TaskStatus
TASK_STATUS_CANCELLED: TaskStatus
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus

class TaskSpec(_message.Message):
    __slots__ = ("agent", "deps", "id", "input_json", "priority", "retries", "retry_backoff_ms", "timeout_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent: str
    input_json: str
    deps: _containers.RepeatedScalarFieldContainer[str]
    retries: int
    priority: int
    timeout_ms: int
    retry_backoff_ms: int
    def __init__(self, id: str | None = ..., agent: str | None = ..., input_json: str | None = ..., deps: _Iterable[str] | None = ..., retries: int | None = ..., priority: int | None = ..., timeout_ms: int | None = ..., retry_backoff_ms: int | None = ...) -> None: ...

class SubmitRunRequest(_message.Message):
    __slots__ = ("idempotency_key", "name", "priority", "tasks")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    idempotency_key: str
    priority: int
    name: str
    def __init__(self, tasks: _Iterable[TaskSpec | _Mapping] | None = ..., idempotency_key: str | None = ..., priority: int | None = ..., name: str | None = ...) -> None: ...

class SubmitRunResponse(_message.Message):
    __slots__ = ("created", "run_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    created: bool
    def __init__(self, run_id: str | None = ..., created: bool | None = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "stale_ok")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    stale_ok: bool
    def __init__(self, run_id: str | None = ..., stale_ok: bool | None = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("agent", "attempt", "deps", "error", "finished_ms", "id", "input_json", "node", "output_json", "retries_left", "started_ms", "status", "token")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RETRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent: str
    status: TaskStatus
    attempt: int
    node: str
    output_json: str
    error: str
    deps: _containers.RepeatedScalarFieldContainer[str]
    token: int
    retries_left: int
    started_ms: int
    finished_ms: int
    input_json: str
    def __init__(self, id: str | None = ..., agent: str | None = ..., status: TaskStatus | str | None = ..., attempt: int | None = ..., node: str | None = ..., output_json: str | None = ..., error: str | None = ..., deps: _Iterable[str] | None = ..., token: int | None = ..., retries_left: int | None = ..., started_ms: int | None = ..., finished_ms: int | None = ..., input_json: str | None = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("created_ms", "error", "finished_ms", "idempotency_key", "name", "priority", "revision", "run_id", "status", "tasks")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    error: str
    created_ms: int
    finished_ms: int
    idempotency_key: str
    name: str
    priority: int
    revision: int
    def __init__(self, run_id: str | None = ..., status: RunStatus | str | None = ..., tasks: _Iterable[Task | _Mapping] | None = ..., error: str | None = ..., created_ms: int | None = ..., finished_ms: int | None = ..., idempotency_key: str | None = ..., name: str | None = ..., priority: int | None = ..., revision: int | None = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("created_ms", "error", "finished_ms", "name", "run_id", "status", "tasks", "unfinished")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    name: str
    tasks: int
    unfinished: int
    created_ms: int
    finished_ms: int
    error: str
    def __init__(self, run_id: str | None = ..., status: RunStatus | str | None = ..., name: str | None = ..., tasks: int | None = ..., unfinished: int | None = ..., created_ms: int | None = ..., finished_ms: int | None = ..., error: str | None = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "status")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    status: RunStatus
    def __init__(self, limit: int | None = ..., status: RunStatus | str | None = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Iterable[RunSummary | _Mapping] | None = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: str | None = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("attempt", "node", "status", "task_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: TaskStatus
    attempt: int
    node: str
    def __init__(self, task_id: str | None = ..., status: TaskStatus | str | None = ..., attempt: int | None = ..., node: str | None = ...) -> None: ...

class RunStatusEvent(_message.Message):
    __slots__ = ("error", "status")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    error: str
    def __init__(self, status: RunStatus | str | None = ..., error: str | None = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("revision", "run", "snapshot", "task")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: Run
    task: TaskEvent
    run: RunStatusEvent
    def __init__(self, revision: int | None = ..., snapshot: Run | _Mapping | None = ..., task: TaskEvent | _Mapping | None = ..., run: RunStatusEvent | _Mapping | None = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("reason", "run_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: str | None = ..., reason: str | None = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("cancelled", "status")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    cancelled: bool
    def __init__(self, status: RunStatus | str | None = ..., cancelled: bool | None = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ("include_digest",)
    INCLUDE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    include_digest: bool
    def __init__(self, include_digest: bool | None = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("agents", "connected", "grpc", "id", "raft", "running", "slots", "up")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    grpc: str
    raft: str
    up: bool
    agents: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    running: int
    connected: bool
    def __init__(self, id: str | None = ..., grpc: str | None = ..., raft: str | None = ..., up: bool | None = ..., agents: _Iterable[str] | None = ..., slots: int | None = ..., running: int | None = ..., connected: bool | None = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("commit_index", "digest", "has_quorum", "last_applied", "leader", "members", "node_id", "revision", "term")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    HAS_QUORUM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    leader: str
    term: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    node_id: str
    commit_index: int
    last_applied: int
    revision: int
    has_quorum: bool
    digest: str
    def __init__(self, leader: str | None = ..., term: int | None = ..., members: _Iterable[Member | _Mapping] | None = ..., node_id: str | None = ..., commit_index: int | None = ..., last_applied: int | None = ..., revision: int | None = ..., has_quorum: bool | None = ..., digest: str | None = ...) -> None: ...
