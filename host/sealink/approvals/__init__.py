"""The approval system's signed command path to a gateway (SPEC §11.5): an approver's key, its
signed requests, the check of the gateway's signed results, and an MQTT 5 client for both; and
the fleet's signed approver messages (SPEC §11.7) that issue and revoke approvers."""

from sealink.approvals._client import ApprovalClient, ApprovalTimeout
from sealink.approvals._fleet import ApproverEntry, approver_topic, build_approver, open_approver
from sealink.approvals._keys import ApproverKey
from sealink.approvals._wire import (
    ACTIONS,
    REASONS,
    ApprovalRefused,
    OpenedRequest,
    ResultError,
    build_request,
    check_body,
    claimed,
    open_request,
    verify_result,
)

__all__ = [
    "ACTIONS",
    "REASONS",
    "ApprovalClient",
    "ApprovalRefused",
    "ApprovalTimeout",
    "ApproverEntry",
    "ApproverKey",
    "OpenedRequest",
    "ResultError",
    "approver_topic",
    "build_approver",
    "build_request",
    "check_body",
    "claimed",
    "open_approver",
    "open_request",
    "verify_result",
]
