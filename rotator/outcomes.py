"""What one avatar write came to, as plain data shared by the client and the policy."""

from __future__ import annotations

import dataclasses
from typing import Literal

OutcomeKind = Literal["success", "error", "uncertain", "unresolved", "no_answer", "not_sent"]
# How a request that got no answer failed: each has its own message and log value.
TransportFailure = Literal[
    "dns_failure",
    "connection_refused",
    "tls_error",
    "connect_timeout",
    "read_timeout",
    "connection_dropped",
    "network_error",
]

# Error codes that say a write may or may not have happened: verify, never resend blindly.
UNCERTAIN_CODES = frozenset({"x_write_ambiguous", "x_write_unconfirmed"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriteAction:
    """The parts of an ``x_write_action`` record the rotator acts on."""

    id: str
    status: str  # accepted | dispatching | pending_confirmation | success | failed | expired
    terminal: bool
    safe_to_retry: bool = False  # X did not get the write: a new Idempotency-Key may be used
    retryable: bool | None = None  # False: a new attempt of the same input cannot succeed
    status_url: str | None = None
    requires_new_key: bool = False  # nextAction.requiresNewIdempotencyKey
    next_action: str | None = None  # nextAction.type: poll | retry | verify_result | fix_request
    error_code: str | None = None  # the failed action's error code, if it gave one
    expires_at: float | None = None  # epoch seconds: deadline for resolving a running write
    charged: bool | None = None  # billing.charged (or the record's own ``charged``)
    charged_credits: int | None = None  # billing.chargedCredits


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """The result of one avatar write, polls included.

    kind:
      success    200 ``{"success": true}`` or a terminal ``success`` write action
      error      an HTTP answer that is not a success (``code`` from the body, else None)
      uncertain  a durable write that did not resolve by its ``expiresAt``, or
                 ``x_write_ambiguous`` / ``x_write_unconfirmed`` with nothing to poll
      unresolved a durable write still running when polling had to stop: resume it later
      no_answer  the request was sent but no answer came (dropped, read timeout):
                 it may have happened, so replay with the same Idempotency-Key
      not_sent   the request never left (DNS, refused connection, TLS, connect timeout)
    """

    kind: OutcomeKind
    status: int | None = None  # HTTP status of the final answer, None without one
    code: str | None = None  # error code (flat, nested, or the failed action's)
    message: str = ""  # short human message from the body or the transport, never the key
    retry_after: float | None = None  # seconds: the largest wait the server asked for
    should_retry: bool | None = None  # the ``x-should-retry`` header, None when absent
    failure: TransportFailure | None = None  # how a request without an answer failed
    request_id: str | None = None  # X-Request-Id of the write
    write_action: WriteAction | None = None
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        """Tell whether the avatar was changed."""
        return self.kind == "success"

    def credits_spent(self, per_call: int) -> int:
        """Return the credits this write cost: the record's billing, else ``per_call``."""
        action = self.write_action
        if action is not None:
            if action.charged_credits is not None:
                return action.charged_credits if action.charged is not False else 0
            if action.charged is not None:
                return per_call if action.charged else 0
        return per_call if self.ok else 0
