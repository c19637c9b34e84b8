"""What one avatar write came to, as plain data shared by the client and the policy."""

from __future__ import annotations

import dataclasses
from typing import Literal

OutcomeKind = Literal["success", "error", "uncertain", "no_answer", "not_sent"]

# Error codes that say a write may or may not have happened: verify, never resend blindly.
UNCERTAIN_CODES = frozenset({"x_write_ambiguous", "x_write_unconfirmed"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriteAction:
    """The parts of an ``x_write_action`` record the rotator acts on."""

    id: str
    status: str  # accepted | dispatching | pending_confirmation | success | failed | expired
    terminal: bool
    safe_to_retry: bool = False
    retryable: bool = False
    status_url: str | None = None
    requires_new_key: bool = False  # nextAction.requiresNewIdempotencyKey
    error_code: str | None = None  # the failed action's error code, if it gave one


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """The result of one avatar write, polls included.

    kind:
      success    200 ``{"success": true}`` or a terminal ``success`` write action
      error      an HTTP answer that is not a success (``code`` from the body, else None)
      uncertain  a durable write that did not reach a terminal state while polled,
                 or ``x_write_ambiguous`` / ``x_write_unconfirmed`` with nothing to poll
      no_answer  the request was sent but no answer came (dropped, read timeout):
                 it may have happened, so replay with the same Idempotency-Key
      not_sent   the request never left (connect error, connect timeout, DNS)
    """

    kind: OutcomeKind
    status: int | None = None  # HTTP status of the final answer, None without one
    code: str | None = None  # error code (flat, nested, or the failed action's)
    message: str = ""  # short human message from the body or the transport, never the key
    retry_after: float | None = None  # seconds: Retry-After header, retryAfter, retryAfterMs
    request_id: str | None = None  # X-Request-Id of the write
    write_action: WriteAction | None = None
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        """Tell whether the avatar was changed."""
        return self.kind == "success"
