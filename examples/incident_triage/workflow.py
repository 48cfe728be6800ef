"""The incident-triage DAG: fetch the alert, three analysts in parallel, a reviewer, a writer, file it.

    alert (http) ─┬─ logs_analyst    (llm + search_logs)    ─┐
                  ├─ deploy_analyst  (llm + recent_deploys) ─┼─ reviewer (llm + runbook agent, JSON) ─ writer (llm) ─ file_report (http)
                  └─ metrics_analyst (llm + metric_summary) ─┘

Prompts name no endpoint or key: the nodes' environment does (``RAFTMESH_LLM_*``).
"""

from __future__ import annotations

from typing import Any

from raftmesh import DAG

INCIDENT = "INC-1042"

_ANALYST = (
    "You are the {role} analyst on an incident response team. Use your tools to look at the "
    "evidence, then answer in at most five sentences, quoting what matters. Say what you did not check."
)

RUNBOOK_TOOL = {
    "name": "runbook",
    "description": "The team's runbook entry for a symptom of a service.",
    "parameters": {
        "type": "object",
        "properties": {"service": {"type": "string"}, "symptom": {"type": "string"}},
        "required": ["service", "symptom"],
    },
}

REVIEW_FORMAT = (
    "Answer with a JSON object: root_cause (string), confidence (low|medium|high), evidence (list of "
    "strings), actions (list of strings), gaps (list of strings)."
)


def build(api_url: str, model: str | None = None) -> DAG:
    """The run for ``INCIDENT`` against the incident API at ``api_url``."""
    common: dict[str, Any] = {"model": model} if model else {}
    dag = DAG(f"incident-triage {INCIDENT}")
    dag.task("alert", "http", input={"url": f"{api_url}/alerts/{INCIDENT}"}, retries=3, retry_backoff_ms=500)
    analysts = {
        "logs_analyst": ("logs", "search_logs", "What do the logs of the alerting service say?"),
        "deploy_analyst": (
            "deploys",
            "recent_deploys",
            "Did a recent change to the alerting service cause this?",
        ),
        "metrics_analyst": ("metrics", "metric_summary", "What do the alerting service's metrics show?"),
    }
    for tid, (role, tool, question) in analysts.items():
        dag.task(
            tid,
            "llm",
            input={
                "system": _ANALYST.format(role=role),
                "prompt": question,
                "tools": [tool],
                "max_steps": 6,
                **common,
            },
            deps=["alert"],
            retries=2,
            retry_backoff_ms=1000,
        )
    dag.task(
        "reviewer",
        "llm",
        input={
            "system": "You are the incident commander. Weigh the analysts' findings against each other, "
            "check the runbook for the symptom, and decide the most likely root cause.",
            "prompt": REVIEW_FORMAT,
            "tools": [RUNBOOK_TOOL],
            "response_format": {"type": "json_object"},
            "max_steps": 4,
            **common,
        },
        deps=list(analysts),
        retries=2,
        retry_backoff_ms=1000,
    )
    dag.task(
        "writer",
        "llm",
        input={
            "system": "You write incident updates for the ticket and the status page: plain words, no blame.",
            "prompt": "Write the incident summary in Markdown: impact, timeline, root cause, actions, open questions.",
            **common,
        },
        deps=["alert", "reviewer"],
        retries=2,
        retry_backoff_ms=1000,
    )
    dag.task(
        "file_report",
        "http",
        input={"method": "POST", "url": f"{api_url}/incidents/{INCIDENT}/report", "json_from": "writer"},
        deps=["writer"],
        retries=3,
        retry_backoff_ms=500,
    )
    return dag
