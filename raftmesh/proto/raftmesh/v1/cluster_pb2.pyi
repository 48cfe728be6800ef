from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    TASK_STATUS_SKIPPED: _ClassVar[TaskStatus]
    TASK_STATUS_WAITING_APPROVAL: _ClassVar[TaskStatus]
    TASK_STATUS_WAITING_CHILDREN: _ClassVar[TaskStatus]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]
    RUN_STATUS_PAUSED: _ClassVar[RunStatus]
    RUN_STATUS_COMPENSATING: _ClassVar[RunStatus]
    RUN_STATUS_COMPENSATED: _ClassVar[RunStatus]
    RUN_STATUS_COMPENSATION_FAILED: _ClassVar[RunStatus]
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_PENDING: TaskStatus
TASK_STATUS_READY: TaskStatus
TASK_STATUS_RUNNING: TaskStatus
TASK_STATUS_SUCCEEDED: TaskStatus
TASK_STATUS_FAILED: TaskStatus
TASK_STATUS_CANCELLED: TaskStatus
TASK_STATUS_SKIPPED: TaskStatus
TASK_STATUS_WAITING_APPROVAL: TaskStatus
TASK_STATUS_WAITING_CHILDREN: TaskStatus
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
RUN_STATUS_PAUSED: RunStatus
RUN_STATUS_COMPENSATING: RunStatus
RUN_STATUS_COMPENSATED: RunStatus
RUN_STATUS_COMPENSATION_FAILED: RunStatus

class TaskSpec(_message.Message):
    __slots__ = ("id", "agent", "input_json", "deps", "retries", "priority", "timeout_ms", "retry_backoff_ms", "locks", "requires", "replicas", "fusion", "quorum", "weights", "agents", "judge", "compensate", "approval", "when_json", "trigger", "map", "max_parallel")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    COMPENSATE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    WHEN_JSON_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent: str
    input_json: str
    deps: _containers.RepeatedScalarFieldContainer[str]
    retries: int
    priority: int
    timeout_ms: int
    retry_backoff_ms: int
    locks: _containers.RepeatedCompositeFieldContainer[LockItem]
    requires: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    fusion: str
    quorum: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    agents: _containers.RepeatedScalarFieldContainer[str]
    judge: str
    compensate: Compensation
    approval: ApprovalSpec
    when_json: str
    trigger: str
    map: str
    max_parallel: int
    def __init__(self, id: _Optional[str] = ..., agent: _Optional[str] = ..., input_json: _Optional[str] = ..., deps: _Optional[_Iterable[str]] = ..., retries: _Optional[int] = ..., priority: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., retry_backoff_ms: _Optional[int] = ..., locks: _Optional[_Iterable[_Union[LockItem, _Mapping]]] = ..., requires: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ..., fusion: _Optional[str] = ..., quorum: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ..., agents: _Optional[_Iterable[str]] = ..., judge: _Optional[str] = ..., compensate: _Optional[_Union[Compensation, _Mapping]] = ..., approval: _Optional[_Union[ApprovalSpec, _Mapping]] = ..., when_json: _Optional[str] = ..., trigger: _Optional[str] = ..., map: _Optional[str] = ..., max_parallel: _Optional[int] = ...) -> None: ...

class Compensation(_message.Message):
    __slots__ = ("agent", "input_json")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    agent: str
    input_json: str
    def __init__(self, agent: _Optional[str] = ..., input_json: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("max_tasks", "max_seconds", "max_cost", "max_tokens")
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_tasks: int
    max_seconds: float
    max_cost: float
    max_tokens: int
    def __init__(self, max_tasks: _Optional[int] = ..., max_seconds: _Optional[float] = ..., max_cost: _Optional[float] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class CompensationStep(_message.Message):
    __slots__ = ("task_id", "compensation_id", "agent", "status", "attempt", "node", "error", "output_json", "started_ms", "finished_ms", "after")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    compensation_id: str
    agent: str
    status: TaskStatus
    attempt: int
    node: str
    error: str
    output_json: str
    started_ms: int
    finished_ms: int
    after: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., compensation_id: _Optional[str] = ..., agent: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ..., error: _Optional[str] = ..., output_json: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., after: _Optional[_Iterable[str]] = ...) -> None: ...

class ApprovalSpec(_message.Message):
    __slots__ = ("prompt", "timeout_ms", "on_timeout")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    timeout_ms: int
    on_timeout: str
    def __init__(self, prompt: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., on_timeout: _Optional[str] = ...) -> None: ...

class ApprovalGate(_message.Message):
    __slots__ = ("id", "opened_ms", "deadline_ms", "decision", "by", "comment", "decided_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    OPENED_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    opened_ms: int
    deadline_ms: int
    decision: str
    by: str
    comment: str
    decided_ms: int
    def __init__(self, id: _Optional[int] = ..., opened_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., decision: _Optional[str] = ..., by: _Optional[str] = ..., comment: _Optional[str] = ..., decided_ms: _Optional[int] = ...) -> None: ...

class TaskAttempt(_message.Message):
    __slots__ = ("attempt", "node", "started_ms", "finished_ms", "outcome", "error", "output_json")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    node: str
    started_ms: int
    finished_ms: int
    outcome: str
    error: str
    output_json: str
    def __init__(self, attempt: _Optional[int] = ..., node: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., output_json: _Optional[str] = ...) -> None: ...

class SubmitRunRequest(_message.Message):
    __slots__ = ("tasks", "idempotency_key", "priority", "name", "budget", "namespace")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    idempotency_key: str
    priority: int
    name: str
    budget: Budget
    namespace: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., idempotency_key: _Optional[str] = ..., priority: _Optional[int] = ..., name: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., namespace: _Optional[str] = ...) -> None: ...

class SubmitRunResponse(_message.Message):
    __slots__ = ("run_id", "created")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    created: bool
    def __init__(self, run_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "stale_ok")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    stale_ok: bool
    def __init__(self, run_id: _Optional[str] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "agent", "status", "attempt", "node", "output_json", "error", "deps", "token", "retries_left", "started_ms", "finished_ms", "input_json", "waiting_reason", "requires", "usage", "preempted_by", "requeued_attempt", "suspect_moves", "parent", "origin", "index", "item_json", "children", "children_waiting", "depth", "when_json", "trigger", "map", "max_parallel", "fusion", "compensate", "approval", "gate", "history")
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
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PREEMPTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_MOVES_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEM_JSON_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_WAITING_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    WHEN_JSON_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    COMPENSATE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
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
    waiting_reason: str
    requires: _containers.RepeatedScalarFieldContainer[str]
    usage: Usage
    preempted_by: _containers.RepeatedCompositeFieldContainer[Preemption]
    requeued_attempt: int
    suspect_moves: int
    parent: str
    origin: str
    index: int
    item_json: str
    children: _containers.RepeatedScalarFieldContainer[str]
    children_waiting: int
    depth: int
    when_json: str
    trigger: str
    map: str
    max_parallel: int
    fusion: Fusion
    compensate: Compensation
    approval: ApprovalSpec
    gate: ApprovalGate
    history: _containers.RepeatedCompositeFieldContainer[TaskAttempt]
    def __init__(self, id: _Optional[str] = ..., agent: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ..., output_json: _Optional[str] = ..., error: _Optional[str] = ..., deps: _Optional[_Iterable[str]] = ..., token: _Optional[int] = ..., retries_left: _Optional[int] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., input_json: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., requires: _Optional[_Iterable[str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., preempted_by: _Optional[_Iterable[_Union[Preemption, _Mapping]]] = ..., requeued_attempt: _Optional[int] = ..., suspect_moves: _Optional[int] = ..., parent: _Optional[str] = ..., origin: _Optional[str] = ..., index: _Optional[int] = ..., item_json: _Optional[str] = ..., children: _Optional[_Iterable[str]] = ..., children_waiting: _Optional[int] = ..., depth: _Optional[int] = ..., when_json: _Optional[str] = ..., trigger: _Optional[str] = ..., map: _Optional[str] = ..., max_parallel: _Optional[int] = ..., fusion: _Optional[_Union[Fusion, _Mapping]] = ..., compensate: _Optional[_Union[Compensation, _Mapping]] = ..., approval: _Optional[_Union[ApprovalSpec, _Mapping]] = ..., gate: _Optional[_Union[ApprovalGate, _Mapping]] = ..., history: _Optional[_Iterable[_Union[TaskAttempt, _Mapping]]] = ...) -> None: ...

class Fusion(_message.Message):
    __slots__ = ("rule", "replicas", "quorum", "weights", "agents", "judge", "standings", "tally_json")
    RULE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    STANDINGS_FIELD_NUMBER: _ClassVar[int]
    TALLY_JSON_FIELD_NUMBER: _ClassVar[int]
    rule: str
    replicas: int
    quorum: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    agents: _containers.RepeatedScalarFieldContainer[str]
    judge: str
    standings: _containers.RepeatedCompositeFieldContainer[ReplicaStanding]
    tally_json: str
    def __init__(self, rule: _Optional[str] = ..., replicas: _Optional[int] = ..., quorum: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ..., agents: _Optional[_Iterable[str]] = ..., judge: _Optional[str] = ..., standings: _Optional[_Iterable[_Union[ReplicaStanding, _Mapping]]] = ..., tally_json: _Optional[str] = ...) -> None: ...

class ReplicaStanding(_message.Message):
    __slots__ = ("id", "agent", "node", "status", "vote", "weight", "score", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VOTE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent: str
    node: str
    status: TaskStatus
    vote: int
    weight: float
    score: float
    error: str
    def __init__(self, id: _Optional[str] = ..., agent: _Optional[str] = ..., node: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., vote: _Optional[int] = ..., weight: _Optional[float] = ..., score: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("tokens_in", "tokens_out", "cost")
    TOKENS_IN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_OUT_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    tokens_in: int
    tokens_out: int
    cost: float
    def __init__(self, tokens_in: _Optional[int] = ..., tokens_out: _Optional[int] = ..., cost: _Optional[float] = ...) -> None: ...

class Preemption(_message.Message):
    __slots__ = ("by_run_id", "by_task_id", "attempt", "at_ms")
    BY_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BY_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    by_run_id: str
    by_task_id: str
    attempt: int
    at_ms: int
    def __init__(self, by_run_id: _Optional[str] = ..., by_task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., at_ms: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "status", "tasks", "error", "created_ms", "finished_ms", "idempotency_key", "name", "priority", "revision", "usage", "spawned_bytes", "budget", "reason", "compensations", "budget_deadline_ms", "trace_id", "namespace", "submitter")
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
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SPAWNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COMPENSATIONS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
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
    usage: Usage
    spawned_bytes: int
    budget: Budget
    reason: str
    compensations: _containers.RepeatedCompositeFieldContainer[CompensationStep]
    budget_deadline_ms: int
    trace_id: str
    namespace: str
    submitter: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., error: _Optional[str] = ..., created_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., name: _Optional[str] = ..., priority: _Optional[int] = ..., revision: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., spawned_bytes: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., reason: _Optional[str] = ..., compensations: _Optional[_Iterable[_Union[CompensationStep, _Mapping]]] = ..., budget_deadline_ms: _Optional[int] = ..., trace_id: _Optional[str] = ..., namespace: _Optional[str] = ..., submitter: _Optional[str] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "status", "name", "tasks", "unfinished", "created_ms", "finished_ms", "error", "idempotency_key", "reason", "namespace")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    name: str
    tasks: int
    unfinished: int
    created_ms: int
    finished_ms: int
    error: str
    idempotency_key: str
    reason: str
    namespace: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., name: _Optional[str] = ..., tasks: _Optional[int] = ..., unfinished: _Optional[int] = ..., created_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., error: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., reason: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "status", "offset", "namespace")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    status: RunStatus
    offset: int
    namespace: str
    def __init__(self, limit: _Optional[int] = ..., status: _Optional[_Union[RunStatus, str]] = ..., offset: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "status_only", "final_run")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_ONLY_FIELD_NUMBER: _ClassVar[int]
    FINAL_RUN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status_only: bool
    final_run: bool
    def __init__(self, run_id: _Optional[str] = ..., status_only: _Optional[bool] = ..., final_run: _Optional[bool] = ...) -> None: ...

class SubmitAndWatchRunRequest(_message.Message):
    __slots__ = ("submit", "status_only")
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_ONLY_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitRunRequest
    status_only: bool
    def __init__(self, submit: _Optional[_Union[SubmitRunRequest, _Mapping]] = ..., status_only: _Optional[bool] = ...) -> None: ...

class RunToEndRequest(_message.Message):
    __slots__ = ("submit", "wait_ms")
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitRunRequest
    wait_ms: int
    def __init__(self, submit: _Optional[_Union[SubmitRunRequest, _Mapping]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "status", "attempt", "node")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: TaskStatus
    attempt: int
    node: str
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class RunStatusEvent(_message.Message):
    __slots__ = ("status", "error")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    error: str
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., error: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("revision", "snapshot", "task", "run", "final")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: Run
    task: TaskEvent
    run: RunStatusEvent
    final: Run
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Union[Run, _Mapping]] = ..., task: _Optional[_Union[TaskEvent, _Mapping]] = ..., run: _Optional[_Union[RunStatusEvent, _Mapping]] = ..., final: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class WatchRunsRequest(_message.Message):
    __slots__ = ("limit", "namespace", "status")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    namespace: str
    status: RunStatus
    def __init__(self, limit: _Optional[int] = ..., namespace: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ...) -> None: ...

class RunsEvent(_message.Message):
    __slots__ = ("revision", "snapshot", "is_snapshot", "changed")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    IS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: _containers.RepeatedCompositeFieldContainer[RunSummary]
    is_snapshot: bool
    changed: RunSummary
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ..., is_snapshot: _Optional[bool] = ..., changed: _Optional[_Union[RunSummary, _Mapping]] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("principal", "role", "namespaces", "auth", "node_id", "methods")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    principal: str
    role: str
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    auth: bool
    node_id: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principal: _Optional[str] = ..., role: _Optional[str] = ..., namespaces: _Optional[_Iterable[str]] = ..., auth: _Optional[bool] = ..., node_id: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("status", "cancelled")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    cancelled: bool
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ("include_digest",)
    INCLUDE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    include_digest: bool
    def __init__(self, include_digest: _Optional[bool] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "grpc", "raft", "up", "agents", "slots", "running", "connected", "suspect", "offers", "breakers")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    grpc: str
    raft: str
    up: bool
    agents: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    running: int
    connected: bool
    suspect: bool
    offers: _containers.RepeatedCompositeFieldContainer[AgentOffer]
    breakers: _containers.RepeatedCompositeFieldContainer[AgentBreaker]
    def __init__(self, id: _Optional[str] = ..., grpc: _Optional[str] = ..., raft: _Optional[str] = ..., up: _Optional[bool] = ..., agents: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., running: _Optional[int] = ..., connected: _Optional[bool] = ..., suspect: _Optional[bool] = ..., offers: _Optional[_Iterable[_Union[AgentOffer, _Mapping]]] = ..., breakers: _Optional[_Iterable[_Union[AgentBreaker, _Mapping]]] = ...) -> None: ...

class AgentOffer(_message.Message):
    __slots__ = ("agent", "capabilities", "concurrency", "breaker_failures", "breaker_cooldown_ms", "timeout_ms", "retries", "running")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BREAKER_COOLDOWN_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    agent: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    breaker_failures: int
    breaker_cooldown_ms: int
    timeout_ms: int
    retries: int
    running: int
    def __init__(self, agent: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., breaker_failures: _Optional[int] = ..., breaker_cooldown_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., retries: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class AgentBreaker(_message.Message):
    __slots__ = ("agent", "state", "failures", "open_until_ms")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    OPEN_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    state: str
    failures: int
    open_until_ms: int
    def __init__(self, agent: _Optional[str] = ..., state: _Optional[str] = ..., failures: _Optional[int] = ..., open_until_ms: _Optional[int] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("leader", "term", "members", "node_id", "commit_index", "last_applied", "revision", "has_quorum", "digest", "snapshots_loaded", "log_entries", "messaging")
    class MessagingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    HAS_QUORUM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_LOADED_FIELD_NUMBER: _ClassVar[int]
    LOG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MESSAGING_FIELD_NUMBER: _ClassVar[int]
    leader: str
    term: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    node_id: str
    commit_index: int
    last_applied: int
    revision: int
    has_quorum: bool
    digest: str
    snapshots_loaded: int
    log_entries: int
    messaging: _containers.ScalarMap[str, int]
    def __init__(self, leader: _Optional[str] = ..., term: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., node_id: _Optional[str] = ..., commit_index: _Optional[int] = ..., last_applied: _Optional[int] = ..., revision: _Optional[int] = ..., has_quorum: _Optional[bool] = ..., digest: _Optional[str] = ..., snapshots_loaded: _Optional[int] = ..., log_entries: _Optional[int] = ..., messaging: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PeerFrame(_message.Message):
    __slots__ = ("node_id", "incarnation", "messages", "acks", "tags", "lane_seqs", "lane_bases", "kinds", "topics", "topics_sent")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LANE_SEQS_FIELD_NUMBER: _ClassVar[int]
    LANE_BASES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_SENT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: str
    messages: _containers.RepeatedCompositeFieldContainer[AgentMessage]
    acks: _containers.RepeatedCompositeFieldContainer[PeerAck]
    tags: _containers.RepeatedScalarFieldContainer[int]
    lane_seqs: _containers.RepeatedScalarFieldContainer[int]
    lane_bases: _containers.RepeatedScalarFieldContainer[int]
    kinds: _containers.RepeatedScalarFieldContainer[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    topics_sent: bool
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[AgentMessage, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[PeerAck, _Mapping]]] = ..., tags: _Optional[_Iterable[int]] = ..., lane_seqs: _Optional[_Iterable[int]] = ..., lane_bases: _Optional[_Iterable[int]] = ..., kinds: _Optional[_Iterable[int]] = ..., topics: _Optional[_Iterable[str]] = ..., topics_sent: _Optional[bool] = ...) -> None: ...

class PeerAck(_message.Message):
    __slots__ = ("id", "error", "retry", "tag")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    error: str
    retry: bool
    tag: int
    def __init__(self, id: _Optional[str] = ..., error: _Optional[str] = ..., retry: _Optional[bool] = ..., tag: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "incarnation", "running", "ts_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: str
    running: int
    ts_ms: int
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., running: _Optional[int] = ..., ts_ms: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("leader", "term", "up")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    leader: str
    term: int
    up: bool
    def __init__(self, leader: _Optional[str] = ..., term: _Optional[int] = ..., up: _Optional[bool] = ...) -> None: ...

class KvEntry(_message.Message):
    __slots__ = ("key", "found", "value_json", "mod_revision", "create_revision", "version", "lease")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    key: str
    found: bool
    value_json: str
    mod_revision: int
    create_revision: int
    version: int
    lease: int
    def __init__(self, key: _Optional[str] = ..., found: _Optional[bool] = ..., value_json: _Optional[str] = ..., mod_revision: _Optional[int] = ..., create_revision: _Optional[int] = ..., version: _Optional[int] = ..., lease: _Optional[int] = ...) -> None: ...

class Fence(_message.Message):
    __slots__ = ("lock", "token", "run_id", "task_id")
    LOCK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    lock: str
    token: int
    run_id: str
    task_id: str
    def __init__(self, lock: _Optional[str] = ..., token: _Optional[int] = ..., run_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class KvGetRequest(_message.Message):
    __slots__ = ("key", "stale_ok")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    key: str
    stale_ok: bool
    def __init__(self, key: _Optional[str] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class KvGetResponse(_message.Message):
    __slots__ = ("entry", "revision")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entry: KvEntry
    revision: int
    def __init__(self, entry: _Optional[_Union[KvEntry, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class KvListRequest(_message.Message):
    __slots__ = ("prefix", "limit", "stale_ok")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    limit: int
    stale_ok: bool
    def __init__(self, prefix: _Optional[str] = ..., limit: _Optional[int] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class KvListResponse(_message.Message):
    __slots__ = ("entries", "revision")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[KvEntry]
    revision: int
    def __init__(self, entries: _Optional[_Iterable[_Union[KvEntry, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class KvPutRequest(_message.Message):
    __slots__ = ("key", "value_json", "lease", "fence", "request_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    value_json: str
    lease: int
    fence: Fence
    request_id: str
    def __init__(self, key: _Optional[str] = ..., value_json: _Optional[str] = ..., lease: _Optional[int] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class KvDeleteRequest(_message.Message):
    __slots__ = ("key", "fence", "request_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    fence: Fence
    request_id: str
    def __init__(self, key: _Optional[str] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class KvCompare(_message.Message):
    __slots__ = ("key", "target", "op", "operand_json")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    OPERAND_JSON_FIELD_NUMBER: _ClassVar[int]
    key: str
    target: str
    op: str
    operand_json: str
    def __init__(self, key: _Optional[str] = ..., target: _Optional[str] = ..., op: _Optional[str] = ..., operand_json: _Optional[str] = ...) -> None: ...

class KvOperation(_message.Message):
    __slots__ = ("kind", "key", "value_json", "lease")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    value_json: str
    lease: int
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., value_json: _Optional[str] = ..., lease: _Optional[int] = ...) -> None: ...

class KvTxnRequest(_message.Message):
    __slots__ = ("compares", "success", "failure", "fence", "request_id")
    COMPARES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    compares: _containers.RepeatedCompositeFieldContainer[KvCompare]
    success: _containers.RepeatedCompositeFieldContainer[KvOperation]
    failure: _containers.RepeatedCompositeFieldContainer[KvOperation]
    fence: Fence
    request_id: str
    def __init__(self, compares: _Optional[_Iterable[_Union[KvCompare, _Mapping]]] = ..., success: _Optional[_Iterable[_Union[KvOperation, _Mapping]]] = ..., failure: _Optional[_Iterable[_Union[KvOperation, _Mapping]]] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class KvOpResult(_message.Message):
    __slots__ = ("kind", "entry", "deleted", "mod_revision")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    entry: KvEntry
    deleted: bool
    mod_revision: int
    def __init__(self, kind: _Optional[str] = ..., entry: _Optional[_Union[KvEntry, _Mapping]] = ..., deleted: _Optional[bool] = ..., mod_revision: _Optional[int] = ...) -> None: ...

class KvTxnResponse(_message.Message):
    __slots__ = ("succeeded", "revision", "results")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    revision: int
    results: _containers.RepeatedCompositeFieldContainer[KvOpResult]
    def __init__(self, succeeded: _Optional[bool] = ..., revision: _Optional[int] = ..., results: _Optional[_Iterable[_Union[KvOpResult, _Mapping]]] = ...) -> None: ...

class KvWatchRequest(_message.Message):
    __slots__ = ("key", "prefix", "from_revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    key: str
    prefix: str
    from_revision: int
    def __init__(self, key: _Optional[str] = ..., prefix: _Optional[str] = ..., from_revision: _Optional[int] = ...) -> None: ...

class KvWatchEvent(_message.Message):
    __slots__ = ("revision", "kind", "entry")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    revision: int
    kind: str
    entry: KvEntry
    def __init__(self, revision: _Optional[int] = ..., kind: _Optional[str] = ..., entry: _Optional[_Union[KvEntry, _Mapping]] = ...) -> None: ...

class KvLeaseRequest(_message.Message):
    __slots__ = ("action", "lease", "ttl_ms", "request_id")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    action: str
    lease: int
    ttl_ms: int
    request_id: str
    def __init__(self, action: _Optional[str] = ..., lease: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class KvLeaseResponse(_message.Message):
    __slots__ = ("lease", "ttl_ms", "deadline_ms", "deleted")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    lease: int
    ttl_ms: int
    deadline_ms: int
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class LockItem(_message.Message):
    __slots__ = ("name", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class LockAcquireRequest(_message.Message):
    __slots__ = ("owner", "locks", "ttl_ms", "priority", "wait_ms", "request_id")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    owner: str
    locks: _containers.RepeatedCompositeFieldContainer[LockItem]
    ttl_ms: int
    priority: int
    wait_ms: int
    request_id: str
    def __init__(self, owner: _Optional[str] = ..., locks: _Optional[_Iterable[_Union[LockItem, _Mapping]]] = ..., ttl_ms: _Optional[int] = ..., priority: _Optional[int] = ..., wait_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class LockAcquireResponse(_message.Message):
    __slots__ = ("granted", "token", "request_id", "deadline_ms", "lease")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    token: int
    request_id: str
    deadline_ms: int
    lease: str
    def __init__(self, granted: _Optional[bool] = ..., token: _Optional[int] = ..., request_id: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., lease: _Optional[str] = ...) -> None: ...

class LockReleaseRequest(_message.Message):
    __slots__ = ("owner", "name", "token", "request_id", "lease")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    name: str
    token: int
    request_id: str
    lease: str
    def __init__(self, owner: _Optional[str] = ..., name: _Optional[str] = ..., token: _Optional[int] = ..., request_id: _Optional[str] = ..., lease: _Optional[str] = ...) -> None: ...

class LockReleaseResponse(_message.Message):
    __slots__ = ("token", "deadline_ms")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    token: int
    deadline_ms: int
    def __init__(self, token: _Optional[int] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class LockListRequest(_message.Message):
    __slots__ = ("prefix", "stale_ok")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    stale_ok: bool
    def __init__(self, prefix: _Optional[str] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class LockHolder(_message.Message):
    __slots__ = ("owner", "mode", "token", "deadline_ms")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    mode: str
    token: int
    deadline_ms: int
    def __init__(self, owner: _Optional[str] = ..., mode: _Optional[str] = ..., token: _Optional[int] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class LockInfo(_message.Message):
    __slots__ = ("name", "holders", "waiters", "last_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    LAST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    holders: _containers.RepeatedCompositeFieldContainer[LockHolder]
    waiters: _containers.RepeatedScalarFieldContainer[str]
    last_token: int
    def __init__(self, name: _Optional[str] = ..., holders: _Optional[_Iterable[_Union[LockHolder, _Mapping]]] = ..., waiters: _Optional[_Iterable[str]] = ..., last_token: _Optional[int] = ...) -> None: ...

class LockListResponse(_message.Message):
    __slots__ = ("locks",)
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    locks: _containers.RepeatedCompositeFieldContainer[LockInfo]
    def __init__(self, locks: _Optional[_Iterable[_Union[LockInfo, _Mapping]]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("run_id", "task_id", "agent", "attempt", "error", "finished_ms")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task_id: str
    agent: str
    attempt: int
    error: str
    finished_ms: int
    def __init__(self, run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., agent: _Optional[str] = ..., attempt: _Optional[int] = ..., error: _Optional[str] = ..., finished_ms: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters",)
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class RetryTaskRequest(_message.Message):
    __slots__ = ("run_id", "task_id", "attempt", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task_id: str
    attempt: int
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ApproveTaskRequest(_message.Message):
    __slots__ = ("run_id", "task_id", "gate", "reject", "by", "comment", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task_id: str
    gate: int
    reject: bool
    by: str
    comment: str
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., gate: _Optional[int] = ..., reject: _Optional[bool] = ..., by: _Optional[str] = ..., comment: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ApproveTaskResponse(_message.Message):
    __slots__ = ("applied", "gate", "decision", "by", "comment", "decided_ms", "status")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    gate: int
    decision: str
    by: str
    comment: str
    decided_ms: int
    status: TaskStatus
    def __init__(self, applied: _Optional[bool] = ..., gate: _Optional[int] = ..., decision: _Optional[str] = ..., by: _Optional[str] = ..., comment: _Optional[str] = ..., decided_ms: _Optional[int] = ..., status: _Optional[_Union[TaskStatus, str]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("run_id", "limit", "after_gate", "after_run_id", "after_task_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_GATE_FIELD_NUMBER: _ClassVar[int]
    AFTER_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    limit: int
    after_gate: int
    after_run_id: str
    after_task_id: str
    def __init__(self, run_id: _Optional[str] = ..., limit: _Optional[int] = ..., after_gate: _Optional[int] = ..., after_run_id: _Optional[str] = ..., after_task_id: _Optional[str] = ...) -> None: ...

class PendingApproval(_message.Message):
    __slots__ = ("run_id", "task_id", "gate", "agent", "prompt", "opened_ms", "deadline_ms", "on_timeout")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OPENED_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task_id: str
    gate: int
    agent: str
    prompt: str
    opened_ms: int
    deadline_ms: int
    on_timeout: str
    def __init__(self, run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., gate: _Optional[int] = ..., agent: _Optional[str] = ..., prompt: _Optional[str] = ..., opened_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., on_timeout: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals", "more")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[PendingApproval]
    more: bool
    def __init__(self, approvals: _Optional[_Iterable[_Union[PendingApproval, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class PauseRunRequest(_message.Message):
    __slots__ = ("run_id", "cancel_running", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RUNNING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    cancel_running: bool
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., cancel_running: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("run_id", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RunControlResponse(_message.Message):
    __slots__ = ("status", "changed", "stopped")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    changed: bool
    stopped: int
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., changed: _Optional[bool] = ..., stopped: _Optional[int] = ...) -> None: ...

class RerunTaskRequest(_message.Message):
    __slots__ = ("run_id", "task_id", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task_id: str
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RerunTaskResponse(_message.Message):
    __slots__ = ("reset", "dropped", "reopened", "status", "run_status")
    RESET_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REOPENED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUN_STATUS_FIELD_NUMBER: _ClassVar[int]
    reset: int
    dropped: int
    reopened: bool
    status: TaskStatus
    run_status: RunStatus
    def __init__(self, reset: _Optional[int] = ..., dropped: _Optional[int] = ..., reopened: _Optional[bool] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., run_status: _Optional[_Union[RunStatus, str]] = ...) -> None: ...

class RetryTaskResponse(_message.Message):
    __slots__ = ("requeued", "attempt", "status")
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    requeued: bool
    attempt: int
    status: TaskStatus
    def __init__(self, requeued: _Optional[bool] = ..., attempt: _Optional[int] = ..., status: _Optional[_Union[TaskStatus, str]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("id", "sender", "target", "topic", "type", "payload_bytes", "payload_json", "correlation_id", "trace_id", "priority", "ttl_ms", "durable", "sent_ms", "source", "reply_to", "epoch", "seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    sender: str
    target: str
    topic: str
    type: str
    payload_bytes: bytes
    payload_json: str
    correlation_id: str
    trace_id: str
    priority: int
    ttl_ms: int
    durable: bool
    sent_ms: int
    source: str
    reply_to: str
    epoch: int
    seq: int
    def __init__(self, id: _Optional[str] = ..., sender: _Optional[str] = ..., target: _Optional[str] = ..., topic: _Optional[str] = ..., type: _Optional[str] = ..., payload_bytes: _Optional[bytes] = ..., payload_json: _Optional[str] = ..., correlation_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., priority: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., durable: _Optional[bool] = ..., sent_ms: _Optional[int] = ..., source: _Optional[str] = ..., reply_to: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("message", "request_id")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    message: AgentMessage
    request_id: str
    def __init__(self, message: _Optional[_Union[AgentMessage, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("id", "seq", "targets")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    id: str
    seq: int
    targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., seq: _Optional[int] = ..., targets: _Optional[_Iterable[str]] = ...) -> None: ...

class MessageRequest(_message.Message):
    __slots__ = ("message", "timeout_s")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    message: AgentMessage
    timeout_s: float
    def __init__(self, message: _Optional[_Union[AgentMessage, _Mapping]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class MessageReply(_message.Message):
    __slots__ = ("reply",)
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: AgentMessage
    def __init__(self, reply: _Optional[_Union[AgentMessage, _Mapping]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topic", "from_start")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    topic: str
    from_start: bool
    def __init__(self, topic: _Optional[str] = ..., from_start: _Optional[bool] = ...) -> None: ...

class MessageDeadLettersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class MessageDeadLetter(_message.Message):
    __slots__ = ("message", "reason", "node", "recorded_ms", "seq")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_MS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    message: AgentMessage
    reason: str
    node: str
    recorded_ms: int
    seq: int
    def __init__(self, message: _Optional[_Union[AgentMessage, _Mapping]] = ..., reason: _Optional[str] = ..., node: _Optional[str] = ..., recorded_ms: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class MessageDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "total")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[MessageDeadLetter]
    total: int
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[MessageDeadLetter, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class SubscribeActorRequest(_message.Message):
    __slots__ = ("topic", "subscriber", "unsubscribe", "request_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subscriber: str
    unsubscribe: bool
    request_id: str
    def __init__(self, topic: _Optional[str] = ..., subscriber: _Optional[str] = ..., unsubscribe: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubscribeActorResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class ListActivationsRequest(_message.Message):
    __slots__ = ("prefix", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    limit: int
    def __init__(self, prefix: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ActivationInfo(_message.Message):
    __slots__ = ("address", "node", "epoch", "granted_ms", "lease_deadline_ms", "queued")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GRANTED_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    address: str
    node: str
    epoch: int
    granted_ms: int
    lease_deadline_ms: int
    queued: int
    def __init__(self, address: _Optional[str] = ..., node: _Optional[str] = ..., epoch: _Optional[int] = ..., granted_ms: _Optional[int] = ..., lease_deadline_ms: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class ListActivationsResponse(_message.Message):
    __slots__ = ("activations",)
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    activations: _containers.RepeatedCompositeFieldContainer[ActivationInfo]
    def __init__(self, activations: _Optional[_Iterable[_Union[ActivationInfo, _Mapping]]] = ...) -> None: ...

class GetAuditRequest(_message.Message):
    __slots__ = ("run_id", "limit")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    limit: int
    def __init__(self, run_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("revision", "time_ms", "kind", "task_id", "attempt", "node", "principal", "request_id", "trace_id", "detail_json")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    revision: int
    time_ms: int
    kind: str
    task_id: str
    attempt: int
    node: str
    principal: str
    request_id: str
    trace_id: str
    detail_json: str
    def __init__(self, revision: _Optional[int] = ..., time_ms: _Optional[int] = ..., kind: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., node: _Optional[str] = ..., principal: _Optional[str] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class GetAuditResponse(_message.Message):
    __slots__ = ("events", "complete", "node_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    complete: bool
    node_id: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., complete: _Optional[bool] = ..., node_id: _Optional[str] = ...) -> None: ...
