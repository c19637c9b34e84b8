"""One rotation of one entry: pick the image, send it, act on the answer, record it.

This is the trip down the architecture's line: catalog → planner → pacer → client →
policy → state. The daemon and ``rotator rotate`` both use it. A rotation loops
until the policy says it is done or given up: retries keep the same image,
refused images give way to the next one, pauses are waited out.

Why one module of this size: every step (choose, prepare, send, resume, act, record)
reads and changes the same rotation in progress and its write record, the ledger entry
that must be saved before a request leaves and resolved after it; apart, they would pass
that record back and forth across modules for no gain in clarity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from rotator.catalog import Catalog, CatalogImage, Payload, natural_key
from rotator.client import FilePayload, XquikClient, idempotency_key
from rotator.clock import utc_now
from rotator.config import AccountEntry, ApiSection
from rotator.errors import ImageError
from rotator.logs import emit
from rotator.outcomes import Outcome, WriteAction
from rotator.pacer import WritePacer
from rotator.pauses import PauseBoard
from rotator.planner import Position, advance, next_image
from rotator.policy import Attempt, Decision, PolicySettings, decide, pause_of
from rotator.state import HistoryRow, Pause, StateStore, WriteRecord

# One kind per way a rotation ends, each named as its log event is (``avatar.uploaded``,
# ``avatar.would_upload``, ``rotation.skipped``, ``rotation.interrupted``, ``avatar.uncertain``)
# or, for "paused", as the pause that held it (``pause.started``).
ResultKind = Literal["uploaded", "would_upload", "skipped", "interrupted", "uncertain", "paused"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotationResult:
    """How one rotation ended."""

    entry_id: str
    account: str
    kind: ResultKind
    image: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Tell whether the avatar changed (or would have, in a dry run)."""
        return self.kind in {"uploaded", "would_upload"}


@dataclasses.dataclass
class _Rotation:
    """One rotation in progress."""

    entry: AccountEntry
    catalog: Catalog
    rotation_id: str
    tries: int = 0
    generation: int = 0  # bumped whenever the same image needs a new Idempotency-Key
    excluded: set[str] = dataclasses.field(default_factory=set)  # refused or rejected, this time
    as_file: bool = False  # the URL could not be fetched: send the bytes
    replay_key: str | None = None  # set: send the last write again under its own key
    chosen: str | None = None  # the image being sent (kept across retries)
    image: CatalogImage | None = None
    payload: Payload | None = None
    record: WriteRecord | None = None  # the ledger's record of the write in flight
    resume: bool = False  # ``record`` is a write to poll before anything is sent
    on_turn: Callable[[], None] = lambda: None  # it no longer waits in line for the pacer

    def ready(self) -> tuple[CatalogImage, Payload]:
        """Return the image and the bytes being sent (set by ``Rotator._prepare``)."""
        if self.image is None or self.payload is None:
            raise RuntimeError("rotation has no image prepared")
        return self.image, self.payload

    def written(self) -> WriteRecord:
        """Return the record of the write the last answer was about."""
        if self.record is None:
            raise RuntimeError("rotation has no write in flight")
        return self.record


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotationSetup:
    """What rotations are configured with; the daemon's reload swaps it whole."""

    client: XquikClient | None  # None: dry run, nothing is ever sent
    policy: PolicySettings
    api: ApiSection
    credits_per_call: int = 10  # credits counted when an answer has no billing


class Rotator:
    """Run rotations against the Xquik API (or pretend to, in a dry run).

    ``setup`` is read afresh at every step, not kept: a rotation that outlives a reload
    (waiting out a pause, say) goes on under the new setup; a request already on the wire
    finishes on the client it was sent with.
    """

    def __init__(
        self,
        *,
        state: StateStore,
        pacer: WritePacer,
        pauses: PauseBoard,
        setup: RotationSetup | Callable[[], RotationSetup],
        fitted_dir: Path,
        rng: random.Random | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.state = state
        self.pacer = pacer
        self.pauses = pauses
        self._setup = setup if callable(setup) else lambda: setup
        self.fitted_dir = fitted_dir
        self._rng = rng or random.Random()  # noqa: S311 - picking images is not cryptography
        self._clock = clock
        self._sleep = sleep
        self.writing: set[asyncio.Task[object]] = set()  # tasks with a request on the wire
        # account -> its lock and how many rotations hold or wait for it (kept only then)
        self._account_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @property
    def setup(self) -> RotationSetup:
        """Return the setup in force (client, policy, ``[api]``, credits per call)."""
        return self._setup()

    @property
    def dry_run(self) -> bool:
        """Tell whether writes are only logged."""
        return self.setup.client is None

    async def rotate(
        self,
        entry: AccountEntry,
        catalog: Catalog,
        *,
        image: str | None = None,
        wait_for_pauses: bool = True,
        stop_reason: Callable[[], str | None] = lambda: None,
        on_turn: Callable[[], None] = lambda: None,
    ) -> RotationResult:
        """Change ``entry``'s avatar once; ``image`` forces the image (a relative path).

        A write of this entry still pending in the ledger is resumed first: polled when
        the server gave it a record, else replayed under its own key. ``stop_reason`` is
        asked before every write: when it says why (shutting down, entry removed), the
        rotation ends there, position unchanged. ``on_turn`` is called (maybe more than
        once) when the rotation stops waiting in line for the pacer: its place granted,
        or it waits out an account's pause, a resumed write or the account's other write.
        """
        rot = _Rotation(
            entry=entry,
            catalog=catalog,
            rotation_id=uuid.uuid4().hex,
            chosen=image,
            on_turn=on_turn,
        )
        pending = self.state.pending_write(entry.entry_id)
        if pending is not None and self.setup.client is not None:
            known = catalog.get(pending.image)
            unchanged = known is not None and known.verdict.sha256 == pending.source_sha256
            if pending.action_id or pending.status_url:
                # The server knows this write: ask it what became of it, send nothing new.
                rot.record, rot.resume = pending, True
                rot.chosen = pending.image if unchanged and image is None else image
            elif unchanged and image is None:
                # No answer came (or the daemon died meanwhile): send it again under the
                # same key, so the server tells what became of it. Later keys of this
                # rotation come from a fresh rotation id, so none repeats a key used.
                rot.chosen = pending.image
                rot.replay_key = pending.idempotency_key
            elif image is None:
                self._abandon(pending)
        while True:
            pause = self.pauses.active(entry.account)
            if pause is not None:
                if not wait_for_pauses:
                    return self._result(rot, "paused", pause.summary())
                await self._wait_out(rot, pause)
            if rot.resume:
                if (stopped := self._stopped(rot, stop_reason)) is not None:
                    return stopped
                key = rot.written().idempotency_key
                async with self._account_lock(rot):
                    outcome = await self._resume(rot)
                rot.resume = False
                if rot.chosen is not None:
                    await self._prepare(rot)  # for a retry of the same image, if one follows
            else:
                # A real write only chooses its image here and reads the bytes once the
                # pacer lets it go (in _send): thousands of rotations due together wait
                # their turn without holding thousands of payloads.
                if self.setup.client is None:
                    chosen = await self._prepare(rot)
                else:
                    chosen = self._choose(rot) is not None
                if not chosen:
                    return self._no_image(rot)
                if self.setup.client is None:
                    return self._pretend(rot)
                if (stopped := self._stopped(rot, stop_reason)) is not None:
                    return stopped
                # One write per account at a time: an answer that pauses the account is
                # seen by the account's next write before it goes out.
                async with self._account_lock(rot):
                    sent = await self._send(rot)
                if sent == "paused":  # a pause began while this write waited for its turn
                    continue
                if sent == "no image":  # none of the images could be read after all
                    return self._no_image(rot)
                key, outcome = sent
            rot.tries += 1
            attempt = Attempt(
                tries=rot.tries,
                pause_level=self._pause_level(rot, outcome),
                url_mode=self._url_for(rot) is not None,
            )
            decision = decide(outcome, attempt, self.setup.policy, self._rng)
            result = self._act(rot, outcome, decision, key)
            if result is not None:
                return result
            if (stopped := self._stopped(rot, stop_reason)) is not None:
                return stopped  # not after a retry delay: a shutdown should not wait for it
            if decision.action in {"retry", "replay"} and decision.delay > 0:
                await self._sleep(decision.delay)

    # -- steps -----------------------------------------------------------------------

    async def _wait_out(self, rot: _Rotation, pause: Pause) -> None:
        """Wait until no pause holds the rotation's account."""
        if pause.scope == "account":
            # Others' writes go on meanwhile; a key pause holds every write, so the
            # rotation keeps its place in line (and the entries behind it stay queued).
            rot.on_turn()
        await self.pauses.wait(rot.entry.account)

    async def _prepare(self, rot: _Rotation) -> bool:
        """Pick the image (unless one is kept) and load its bytes; False when none is left."""
        while True:
            image = self._choose(rot)
            if image is None:
                return False
            if rot.image is image and rot.payload is not None:
                return True
            try:
                rot.payload = await asyncio.to_thread(
                    rot.catalog.load_payload, image, self.fitted_dir
                )
            except ImageError as exc:
                emit(
                    "image.rejected",
                    path=image.relative,
                    folder=str(rot.catalog.folder),
                    reason=str(exc),
                )
                rot.excluded.add(image.relative)
                rot.chosen = None
                continue
            rot.image = image
            return True

    def _choose(self, rot: _Rotation) -> CatalogImage | None:
        if rot.chosen is not None:
            kept = rot.catalog.get(rot.chosen)
            if kept is not None and rot.chosen not in rot.excluded:
                return kept
            rot.chosen, rot.replay_key = None, None  # it went away meanwhile
        refused = self.state.refused_hashes()
        usable = {image.relative: image for image in rot.catalog.usable()}
        excluded = {image for _, image in self.state.excluded_images(rot.entry.entry_id)}
        names = [
            name
            for name, image in usable.items()
            if image.verdict.sha256 not in refused and name not in excluded
        ]
        saved = self.state.entry(rot.entry.entry_id)
        position = Position(last_image=saved.last_image, shown_in_cycle=saved.shown_in_cycle)
        exclude = set(rot.excluded)
        if saved.uncertain and saved.last_image is not None:
            # X may have that write: a new key for the same image could double it.
            exclude.add(saved.last_image)
        name = next_image(
            rot.entry.order,
            names,
            position,
            self._rng,
            sort_key=natural_key,
            exclude=exclude,
        )
        if name is None:
            return None
        rot.chosen, rot.replay_key = name, None  # a key belongs to the image it was sent with
        return usable[name]

    def _no_image(self, rot: _Rotation) -> RotationResult:
        emit("rotation.skipped", account=rot.entry.account, reason="no usable image")
        return self._result(rot, "skipped", "no usable image")

    def _stopped(
        self, rot: _Rotation, stop_reason: Callable[[], str | None]
    ) -> RotationResult | None:
        """End the rotation here if the daemon is stopping or the entry went away."""
        why = stop_reason()
        if why is None:
            return None
        # Not "skipped": nothing went wrong with it, the daemon (or its entry) is going away.
        emit("rotation.interrupted", account=rot.entry.account, reason=why)
        return self._result(rot, "interrupted", why)

    @contextlib.asynccontextmanager
    async def _account_lock(self, rot: _Rotation) -> AsyncIterator[None]:
        """Hold the account's lock; it is forgotten once no rotation holds or awaits it.

        Kept for ever, 10,000 accounts' locks stayed in memory after their one rotation.
        """
        account = rot.entry.account
        held = self._account_locks.get(account)
        if held is None:
            held = self._account_locks[account] = (asyncio.Lock(), [0])
        lock, users = held
        if lock.locked():
            rot.on_turn()  # waiting for the account's other write, not for the pacer
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._account_locks[account]

    def _new_key(self, rot: _Rotation) -> str:
        assert rot.payload is not None
        return idempotency_key(
            rot.entry.entry_id, rot.payload.sha256, rot.rotation_id, rot.generation
        )

    def _url_for(self, rot: _Rotation) -> str | None:
        """Return the public URL to send instead of the bytes, or None to send the file."""
        image = rot.image
        if (
            self.setup.api.upload != "url"
            or rot.as_file
            or image is None
            or image.verdict.needs_fit
        ):
            return None  # a fitted copy is not at the public URL
        base = (rot.entry.public_base_url or self.setup.api.public_base_url or "").rstrip("/")
        return f"{base}/{quote(bytes(image.path.relative_to(rot.catalog.folder)))}"

    def _keep(self, rot: _Rotation, **changes: object) -> None:
        """Replace the write's record with what the server told, and persist it."""
        record = dataclasses.replace(rot.written(), **changes)  # type: ignore[arg-type]
        if record != rot.record:
            rot.record = record
            self.state.save_write(record, now=self._clock())

    def _on_record(self, rot: _Rotation) -> Callable[[WriteAction, str], None]:
        """Return the callback that keeps every write record the client sees."""

        def keep(action: WriteAction, url: str) -> None:
            expires = action.expires_at
            self._keep(
                rot,
                action_id=action.id or rot.written().action_id,
                status_url=url,
                expires_at=None if expires is None else dt.datetime.fromtimestamp(expires, dt.UTC),
                last_status=action.status or None,
            )

        return keep

    async def _send(self, rot: _Rotation) -> tuple[str, Outcome] | Literal["paused", "no image"]:
        """Send the write when the pacer allows; return its key and outcome, or why not."""
        assert self.setup.client is not None
        async with self.pacer.slot() as answered:
            rot.on_turn()
            if self.pauses.active(rot.entry.account) is not None:
                answered.unused()
                return "paused"
            # The bytes are read only now, with the place granted (kept across retries).
            if not await self._prepare(rot):
                answered.unused()
                return "no image"
            key = rot.replay_key or self._new_key(rot)
            outcome = await self._send_now(rot, key, answered)
        if outcome.request_id is not None:
            # Kept with what comes of the answer (_act), in the same transaction.
            rot.record = dataclasses.replace(rot.written(), request_id=outcome.request_id)
        return key, outcome

    async def _send_now(self, rot: _Rotation, key: str, answered: Callable[[], None]) -> Outcome:
        """Record the write, then send it (the pacer's place is held by the caller)."""
        client = self.setup.client
        assert client is not None
        image, payload = rot.ready()
        url = self._url_for(rot)
        rot.record = WriteRecord(
            entry_id=rot.entry.entry_id,
            account=rot.entry.account,
            image=image.relative,
            sha256=payload.sha256,
            source_sha256=payload.source_sha256,
            idempotency_key=key,
            rotation_id=rot.rotation_id,
            started=self._clock(),
            last_status="sending",
        )
        self.state.save_write(rot.record, now=self._clock())
        task = asyncio.current_task()
        if task is not None:
            self.writing.add(task)
        try:
            # Exactly one of the two: an HTTPS URL Xquik fetches, or the bytes themselves.
            file = (
                None
                if url is not None
                else FilePayload(data=payload.data, filename=payload.filename, mime=payload.mime)
            )
            return await client.update_avatar(
                rot.entry.account,
                idempotency_key=key,
                file=file,
                url=url,
                on_answer=answered,
                on_record=self._on_record(rot),
            )
        finally:
            if task is not None:
                self.writing.discard(task)

    async def _resume(self, rot: _Rotation) -> Outcome:
        """Poll the pending write the ledger holds until it resolves (or polling must stop)."""
        client = self.setup.client
        assert client is not None
        rot.on_turn()  # polling may take minutes, and takes no place at the pacer
        record = rot.written()
        emit(
            "write.resumed",
            account=rot.entry.account,
            image=record.image,
            action_id=record.action_id,
            status=record.last_status,
        )
        task = asyncio.current_task()
        if task is not None:
            self.writing.add(task)
        try:
            return await client.poll_write_action(
                record.status_url,
                action_id=record.action_id,
                expires_at=_epoch(record.expires_at),
                request_id=record.request_id,
                on_record=self._on_record(rot),
            )
        finally:
            if task is not None:
                self.writing.discard(task)

    def _abandon(self, record: WriteRecord) -> None:
        """Keep an unanswered write whose image changed or went away as uncertain.

        Its exact input cannot be sent again, so the server cannot be asked under its
        key; it may have happened, and the history says so before anything new goes.
        """
        row = dataclasses.replace(
            record.audit_row(self._clock(), "uncertain"),
            message="the image changed or went away before its unanswered write was replayed",
            request_id=record.request_id,
            attempt=0,
        )
        self._mark_uncertain(row, error="image changed")

    def _mark_uncertain(
        self,
        row: HistoryRow,
        *,
        error: str,
        shown_in_cycle: frozenset[str] | None = None,
    ) -> None:
        """Record a write whose fate is unknown (history, entry flag) and log it."""
        self.state.record_uncertain(row, shown_in_cycle=shown_in_cycle)
        emit(
            "avatar.uncertain",
            account=row.account,
            image=row.image,
            error=error,
            status=row.status,
            request_id=row.request_id,
            action_id=row.action_id,
            credits=row.credits or 0,
        )

    def _pause_level(self, rot: _Rotation, outcome: Outcome) -> int:
        """Return how often the pause this outcome calls for has come back already."""
        target = pause_of(outcome)
        if target is None:
            return 0
        scope, kind = target
        current = self.pauses.current(scope, rot.entry.account)
        if current is not None and current.kind == kind:
            # Another write in flight already hit this pause: the same pause, not a return.
            return current.level
        return self.pauses.level_for(scope, rot.entry.account, kind)

    def _act(
        self, rot: _Rotation, outcome: Outcome, decision: Decision, key: str
    ) -> RotationResult | None:
        """Record the answer and return the rotation's result, or None to go on."""
        entry = rot.entry
        record = rot.written()
        now = self._clock()
        action_id = outcome.write_action.id if outcome.write_action else record.action_id
        credits = outcome.credits_spent(self.setup.credits_per_call)
        if decision.action == "done":
            self._move_on(rot, outcome, now, credits)
            self.pauses.succeeded(entry.account)
            emit(
                "avatar.uploaded",
                account=entry.account,
                image=record.image,
                bytes=len(rot.payload.data) if rot.payload is not None else None,
                duration_ms=outcome.duration_ms,
                request_id=outcome.request_id,
                action_id=action_id or None,
                credits=credits,
                fitted=rot.payload is not None and rot.payload.fitted is not None,
            )
            return self._result(rot, "uploaded", decision.reason)
        if decision.pause is not None and decision.action != "pause":
            self._pause(rot, decision)  # e.g. a failed record that is uncertain and throttled
        if decision.refuse_image and decision.action != "next_image":
            self._refuse(rot, decision, now)
        row = dataclasses.replace(
            record.audit_row(now, outcome.kind),
            error_code=outcome.code,
            status=outcome.status,
            message=outcome.message,
            request_id=outcome.request_id or record.request_id,
            attempt=rot.tries,
            action_id=action_id or None,
            credits=credits,
        )
        if decision.action == "uncertain":
            # It may have happened: move on rather than send the same image blindly.
            self._mark_uncertain(
                dataclasses.replace(row, error_code=outcome.code or decision.reason),
                error=decision.reason,
                shown_in_cycle=self._position_after(rot).shown_in_cycle,
            )
            return self._result(rot, "uncertain", decision.reason)

        # The same key may go out again (now, after a pause, or at the next rotation):
        # the ledger keeps the write until the server has told what became of it.
        same_key = decision.action in {"replay", "resume_later"} or (
            decision.action == "pause" and not decision.new_key
        )
        retry_in = decision.delay if decision.action in {"retry", "replay"} else None
        if decision.action == "resume_later":
            row = dataclasses.replace(row, outcome="unresolved")
        self.state.record_failure(
            row,
            pending=record if same_key else None,
            shown_in_cycle=self._position_after(rot).shown_in_cycle if decision.move_on else None,
        )
        emit(
            "avatar.failed",
            account=entry.account,
            image=record.image,
            error=decision.reason,
            retry_in_s=None if retry_in is None else round(retry_in, 3),
            status=outcome.status,
            message=outcome.message,
            attempt=rot.tries,
            action=decision.action,
            action_id=action_id or None,
        )
        if decision.action in {"give_up", "resume_later"} or (
            decision.counts_as_try and rot.tries >= self.setup.policy.attempts
        ):
            why = decision.detail or (
                "the write is still running: the next rotation resumes it"
                if decision.action == "resume_later"
                else "out of tries"
            )
            emit("rotation.skipped", account=entry.account, reason=f"{decision.reason}: {why}")
            return self._result(rot, "skipped", decision.reason)
        rot.replay_key = key if same_key else None
        if decision.action == "next_image":
            self._refuse(rot, decision, now)
            rot.excluded.add(record.image)
            rot.chosen = None
        elif decision.action == "as_file":
            rot.as_file = True
            rot.generation += 1  # other bytes than the URL write: a new Idempotency-Key
        elif decision.action == "pause":
            self._pause(rot, decision)
            if decision.new_key:
                rot.generation += 1
        elif decision.action in {"retry", "new_key"}:  # same image, a new Idempotency-Key
            rot.generation += 1
        return None

    def _pause(self, rot: _Rotation, decision: Decision) -> None:
        """Start the pause a decision calls for."""
        assert decision.pause is not None
        scope = decision.pause_scope or ("key" if decision.scope == "key" else "account")
        self.pauses.pause(
            scope=scope,
            account=rot.entry.account,
            kind=decision.pause,
            reason=decision.reason,
            seconds=decision.pause_for or decision.delay,
        )

    def _refuse(self, rot: _Rotation, decision: Decision, now: dt.datetime) -> None:
        """Remember the image as refused by the server until its file changes."""
        record = rot.written()
        self.state.mark_refused(
            sha256=record.source_sha256, path=record.image, code=decision.reason, now=now
        )

    def _pretend(self, rot: _Rotation) -> RotationResult:
        """Do everything but the write: log it and move the position on."""
        image, payload = rot.ready()
        self._move_on(rot, None, self._clock())
        emit(
            "avatar.would_upload",
            account=rot.entry.account,
            image=image.relative,
            bytes=len(payload.data),
            mime=payload.mime,
            fitted=payload.fitted is not None,
        )
        return self._result(rot, "would_upload", "dry run")

    def _move_on(
        self, rot: _Rotation, outcome: Outcome | None, now: dt.datetime, credits: int = 0
    ) -> None:
        """Record the image as sent and the position after it, in one transaction."""
        if rot.record is None:  # a dry run: nothing was written
            image, payload = rot.ready()
            row = HistoryRow(
                time=now,
                entry_id=rot.entry.entry_id,
                account=rot.entry.account,
                image=image.relative,
                sha256=payload.sha256,
                source_sha256=payload.source_sha256,
                outcome="success",
                duration_ms=0,
            )
        else:
            row = rot.record.audit_row(now, "success")
        if outcome is not None:
            action = outcome.write_action
            row = dataclasses.replace(
                row,
                request_id=outcome.request_id,
                status=outcome.status,
                duration_ms=outcome.duration_ms,
                action_id=action.id if action and action.id else None,
                credits=credits,
            )
        self.state.record_success(row, shown_in_cycle=self._position_after(rot).shown_in_cycle)

    def _position_after(self, rot: _Rotation) -> Position:
        """Return the entry's position once the image being sent counts as sent."""
        sent = rot.record.image if rot.record is not None else rot.ready()[0].relative
        saved = self.state.entry(rot.entry.entry_id)
        return advance(
            rot.entry.order,
            [usable.relative for usable in rot.catalog.usable()],
            Position(last_image=saved.last_image, shown_in_cycle=saved.shown_in_cycle),
            sent,
        )

    @staticmethod
    def _result(rot: _Rotation, kind: ResultKind, reason: str) -> RotationResult:
        image = rot.record.image if rot.record is not None else None
        if rot.image is not None and (image is None or kind in {"skipped", "interrupted"}):
            image = rot.image.relative
        return RotationResult(
            entry_id=rot.entry.entry_id,
            account=rot.entry.account,
            kind=kind,
            image=image,
            reason=reason,
        )
