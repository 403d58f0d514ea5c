"""Why a workload's pods are not running: the scheduler's own words, for the errors and logs of the platform.

A train task asks for a GPU, the GPU node's label and its taint; when no GPU node is free its pods stay Pending
and the only place that says why is the pod's `PodScheduled` condition, which the scheduler writes
(`0/3 nodes are available: 1 Insufficient nvidia.com/gpu, ...`). The TrainJob launcher reports it while it waits
and in its timeout error, so a person reads "no free GPU" instead of "did not complete".
"""

from __future__ import annotations

from typing import Any


def pending_reasons(pods: list[Any]) -> list[str]:
    """`<pod>: <scheduler message>` for each pod the scheduler could not place (PodScheduled=False).

    Args:
        pods: Pods as the Kubernetes client returns them (`V1Pod`) or as dictionaries.
    """
    reasons = []
    for pod in pods:
        obj = pod if isinstance(pod, dict) else pod.to_dict()
        status = obj.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                name = (obj.get("metadata") or {}).get("name")
                reason = condition.get("reason") or "Unschedulable"
                reasons.append(f"{name}: {reason}: {condition.get('message') or 'no message'}")
    return reasons


def unschedulable(core_api: Any, namespace: str, label_selector: str) -> list[str]:
    """The scheduler's reasons for the Pending pods matching `label_selector` (empty when all are placed).

    Args:
        core_api: A `kubernetes.client.CoreV1Api`.
        namespace: Namespace of the pods.
        label_selector: Which pods, e.g. `jobset.sigs.k8s.io/jobset-name=<trainjob>`.
    """
    pods = core_api.list_namespaced_pod(namespace, label_selector=label_selector, _request_timeout=30).items
    return pending_reasons(pods)
