"""The request flow both chat front ends share: check, download, queue, show progress, answer.

A front end turns a platform event into an ``Ask`` (where the photo is, what was asked) and implements ``Reply``
(how to show a status line, the result and an error on its platform). Everything else — admission (bot/admission.py:
size, kind, limits, rules, room), the queue, the wording, a chained request (a photo made into one kind, then that
into another) — lives here, once; the reading of options and the buttons' rules in bot/options.py, the pace of
status edits in bot/pacing.py. It names no kind of job: each kind's words and rules are its own
(pipeline/core/kinds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from bot.admission import Admission, AdmissionRule, Admitted
from bot.ask import Ask
from bot.budget import PhotoBudget
from bot.config import Config, PackSettings
from bot.credits import Credits, OutOfCredits
from bot.journal import NOT_COUNTED, Duplicate, Entry, Journal, RateLimited, Then
from bot.observability import Metrics, job_context
from bot.options import UserError, words_line
from bot.pacing import StatusLine, StatusPacer, edit_intervals
from bot.running import CLOSE_GRACE, RunningRequests  # noqa: F401  (the front ends import them from here)
from bot.store import ClaybotDatabase
from pipeline.core.errors import ClaybotError
from pipeline.core.intake import take_in
from pipeline.core.jobs import (
    MP4,
    BadRequest,
    Done,
    ErrorKind,
    Failed,
    Job,
    JobFailed,
    JobHandle,
    JobQueue,
    Progress,
    QueueBusy,
    QueueClosed,
    Queued,
    Started,
)
from pipeline.core.kinds import kind_of

logger = logging.getLogger(__name__)

FETCHING = "Got it; fetching your photo…"  # the first status line, as soon as a request is let in
FETCH_FAILED = "I could not fetch that photo from Telegram; please send it again."
CALM_LINE = "Something went wrong on my side; please try again."  # what a user sees of any failure of ours
# What pipeline/core/images.py accepts (its ACCEPTED_FORMATS), by the names files have when a platform gives no type
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".heic", ".heif", ".avif", ".mpo")
REFUSED_TYPES = ("image/tiff", "image/svg+xml")  # image types that platforms report and the pipeline cannot read


class Reply(Protocol):
    """How a front end shows things; the flow decides what and when (and how fast: bot/pacing.py)."""

    @property
    def private(self) -> bool:
        """Refusals are seen by the asker alone (Discord's ephemeral answers): repeating them is no spam."""

    async def status(self, text: str) -> None:
        """Create or edit the one status message of this request."""

    async def result(self, done: Done, caption: str) -> None:
        """Post the stylized image (replacing or removing the status message)."""

    async def error(self, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        """Tell the user why there is no image (replacing the status message); ``offer``: credit packs the person
        could buy (they are out of credits: bot/credits.py), for buy buttons under the line."""

    def placeholder(self) -> dict[str, Any]:
        """Where the status message is, once shown ({} if there is none a restarted process could tidy up)."""


class FrontEnd(Protocol):
    """A chat platform's glue, as `claybot run` drives it."""

    name: str

    async def start(self) -> None:
        """Connect and begin taking requests; return once running."""

    async def stop_taking(self) -> None:
        """Take no new requests, but stay connected so running ones still get their answers."""

    async def close(self) -> None:
        """Disconnect."""

    async def ended(self) -> Exception:
        """Once started, wait until the front end stops serving by itself (its connection lost for good), and say
        why; a lost connection its library reconnects by itself does not count."""

    async def deliver(self, chat_id: str, done: Done | None, text: str, answer_to: dict[str, Any],
                      source: bytes | None = None) -> None:
        """Post a result (or, with ``done`` None, a line of text) to a chat, looking as a live answer does (the
        platform's one renderer; ``source``: the photo, when kept), replying to ``answer_to``'s message when it
        names one, and removing the status message the old process left (``Reply.placeholder``): for jobs a
        restarted chat process answers (the original request is gone)."""


def is_image(content_type: str | None, filename: str | None) -> bool:
    """Whether a file the platform describes is an image claybot can work on: its MIME type when it tells, else its
    name. Checked before anything is downloaded; the worker reads the real format from the bytes."""
    if content_type:
        kind = content_type.split(";")[0].strip().lower()
        return kind.startswith("image/") and kind not in REFUSED_TYPES
    return filename is not None and filename.lower().endswith(IMAGE_SUFFIXES)


def not_an_image(kind: str | None) -> UserError:
    """The refusal of a file ``is_image`` turned down (``kind``: its type, when the platform told)."""
    told = f" ({kind})" if kind else ""
    return UserError(f"That file is not an image I can use{told}: send a JPEG, PNG, WebP, GIF or HEIC photo.")


def user_line(error: BaseException, what: str, log: logging.Logger = logger) -> str:
    """The line a user sees for an error raised while serving them: their own mistake in its own words; anything
    else is logged on ``log`` (``what`` failed, with its traceback) and gets the calm line."""
    if isinstance(error, UserError | BadRequest | RateLimited | QueueBusy | QueueClosed):
        return str(error)
    log.error("%s failed", what, exc_info=error)
    return CALM_LINE


def shorten(text: str, limit: int) -> str:
    """Cut at a word boundary with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",")
    return cut + "…"


def caption(done: Done, *, tag_chars: int = 200) -> str:
    """What the result says about itself: style, strength (where its engine has one), seed, the person's own words
    (``words_line``, on a line of their own) and the tags used (shortened); a clip: its style, seed and tags (its
    strength is its picture's business)."""
    tags = shorten(", ".join(done.tags), tag_chars) if done.tags else "no tags"
    if done.media == MP4:
        return f"🎬 {done.style} · seed {done.seed}\n{tags}"
    speed = "" if done.speed == "default" else f" · {done.speed}"
    strength = f" · strength {done.strength:g}" if done.strength else ""  # an edit engine's picture has none
    words = f"\n{words_line(done.words)}" if done.words else ""
    return f"{done.style}{strength} · seed {done.seed}{speed}{words}\n{tags}"


class RequestFlow:
    """Check → limits → download → queue → progress → answer, for every front end.

    With a ``store`` (claybot's SQLite database), every request is written to the journal: the per-person and
    per-chat limits count it, and a restarted process answers it (``recover``). With ``metrics``, each request is
    counted by outcome and timed.
    """

    def __init__(self, queue: JobQueue, config: Config, *, store: ClaybotDatabase | None = None,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
                 rules: Sequence[AdmissionRule] = (), credits: Credits | None = None) -> None:
        self.queue = queue
        self.credits = credits  # the ledger's API for the front ends (/balance, payments); None: credits are off
        self.config = config
        self.pacer = StatusPacer(edit_intervals(config))  # every status edit of every request, per chat
        self.store = store
        self.journal = Journal(store, config.limits, clock=clock, rules=rules) if store is not None else None
        self.metrics = metrics
        self.clock = clock
        self.recovering = RunningRequests()  # answering jobs accepted before a restart
        self.told: dict[tuple[str, str, str], float] = {}  # (platform, person, chat) → told of a limit until then
        self.budget = PhotoBudget(int(config.bot.photo_budget_mb * 2**20), config.bot.photo_budget_wait)
        self.admission = Admission(config, queue, self.journal)

    def max_bytes(self, platform_limit: int | None = None) -> int:
        """The most bytes a photo may have: ours, or the platform's download limit if lower."""
        ours = int(self.config.bot.max_photo_mb * 1024 * 1024)
        return min(ours, platform_limit) if platform_limit else ours

    def check_size(self, size: int | None, platform_limit: int | None = None) -> None:
        """Refuse a photo that is too large before downloading it."""
        limit = self.max_bytes(platform_limit)
        if size is not None and size > limit:
            raise UserError(f"That file is {size / 2**20:.1f} MB; I can take photos up to {limit / 2**20:.0f} MB.")

    async def admit(self, ask: Ask, *, platform_limit: int | None = None) -> Admitted:
        """Admission (bot/admission.py), before anything is downloaded: the photo's announced size, then the kind,
        its options, the limits, the rules and room in the queue; the refusal is raised, for the caller to say."""
        self.check_size(ask.size, platform_limit)
        admitted = await self.admission.admit(ask, self.budget.coming)
        self.told.pop((ask.platform, ask.user_id, ask.chat_id), None)  # under the limits again
        return admitted

    async def handle(self, ask: Ask, reply: Reply, *, platform_limit: int | None = None,
                     admitted: Admitted | None = None) -> Done | None:
        """Serve one request to the end; every outcome is answered through ``reply`` (exactly once). ``admitted``:
        the request was admitted already (``admit``), by a front end that had to answer first."""
        request = _Request(ask, _Acked(reply, ask, self.metrics), self.pacer)
        request.admitted = admitted
        try:
            await self._handle(request, platform_limit)
        except Duplicate:
            logger.info("%s event %s was delivered again; it is already being answered", ask.platform, ask.origin)
            return None
        except RateLimited as err:
            if self._tell_once(ask, request.reply, err):
                await request.refuse("rate_limited", str(err))
            else:
                request.outcome = "rate_limited"
                logger.info("%s user %s in %s is still over a limit: not told again", ask.platform, ask.user_id,
                            ask.chat_id)
        except OutOfCredits as err:  # with the packs they could buy
            await request.refuse("no_credits", str(err), offer=err.packs)
        except (UserError, BadRequest) as err:
            await request.refuse("bad_input", str(err))
        except JobFailed as err:  # intake could not use the photo
            if self.metrics is not None:
                self.metrics.failure(err.kind.value)
            await request.refuse(outcome_of(err.kind), str(err))
        except (QueueBusy, QueueClosed) as err:
            await request.refuse(NOT_COUNTED, str(err))
        except Exception:
            logger.exception("request from %s user %s failed", ask.platform, ask.user_id)
            await request.refuse("failed", CALM_LINE)
        finally:
            self.budget.release(request.held)
        await self._close(request)
        return request.done

    async def _handle(self, request: _Request, platform_limit: int | None) -> None:
        ask = request.ask
        # 1. admission, before any download (bot/admission.py), unless the front end admitted it already
        if request.admitted is None:
            request.admitted = await self.admit(ask, platform_limit=platform_limit)
        if request.admitted.ticket is not None:
            request.reply.on_first_status = lambda: self._note_placeholder(request)
        # they see at once they were heard, before any wait; later lines take the chat's turns (bot/pacing.py)
        await request.status_line().show(FETCHING)

        # 2. download (through the platform's client; never a URL a user typed), once the photo budget has room
        with self.budget.on_the_way():
            request.held = await self.budget.reserve(ask.size or self.max_bytes(platform_limit))
            data = await ask.download()
        self.check_size(len(data), platform_limit)
        request.held = self.budget.resize(request.held, len(data))

        # 3. intake: one settled job (BadRequest for an option the config lacks, JobFailed for a bad photo), queued;
        #    a chained request is two: the photo made into ``first``, then that answer into ``kind``
        then = Then(ask.kind, dict(ask.options)) if ask.first is not None else None
        job = await take_in(self.config, data, kind=ask.first or ask.kind, style=ask.style, seed=ask.seed,
                            max_rating=self.config.safety.limit(ask.nsfw), reply_to=(ask.platform, ask.chat_id),
                            options=None if then is not None else ask.options)
        done = await self._run(job, request, then=then)
        if then is not None and done is not None:
            request.done = None
            try:
                next_job = await self._next_job(then, done, job)
                handle = await self.queue.submit(next_job)
            except (QueueBusy, QueueClosed, BadRequest, JobFailed) as err:
                # The first answer is made: posted rather than lost, saying why the rest did not follow.
                logger.info("%s: the chain stops after its %s (%s)", ask.platform, job.kind, err)
                request.done, request.outcome = done, "image"
                await request.status_line().close()
                await _safely(request.reply.result(done, f"{caption(done)}\n{err}"))
                return
            await self._follow_job(handle, request)

    async def _next_job(self, then: Then, done: Done, job: Job) -> Job:
        """The next job of a chain: made from the answer of ``job``, in its style and with its seed."""
        return await take_in(self.config, done.image, kind=then.kind, style=done.style, seed=done.seed,
                             max_rating=job.max_rating, reply_to=job.reply_to, options=then.options)

    async def _run(self, job: Job, request: _Request, *, then: Then | None = None) -> Done | None:
        """Queue a settled job, journal it (with what the request asks for after it) and follow it to its end
        (with ``then``, its Done is only returned, for the chain's next job)."""
        return await self._follow_job(await self.queue.submit(job), request, then=then)

    async def _follow_job(self, handle: JobHandle, request: _Request, *, then: Then | None = None) -> Done | None:
        """Journal a queued job and follow it to its end (``_run``)."""
        ask, job = request.ask, handle.job
        request.submitted = time.monotonic()
        with job_context(handle.id):
            logger.info("%s job %s from %s user %s in %s", job.kind, handle.id, ask.platform, ask.user_id,
                        ask.chat_id)
            if self.journal is not None and request.ticket is not None:  # a ticket comes from the journal
                await self.journal.queued(request.ticket, handle.id, job, then)
            await self._follow(handle, request, answer=then is None)
        return request.done

    def _tell_once(self, ask: Ask, reply: Reply, refusal: RateLimited) -> bool:
        """Whether to tell this person they are over a limit: once until the wait it names is over (or, for a
        limit without a wait, until they are let through again), so someone who re-adds a reaction again and again
        does not make the bot post a refusal each time. Private answers (Discord's ephemeral ones) always go out."""
        if reply.private:
            return True
        now = self.clock()
        if len(self.told) > MAX_TOLD:  # forget the waits that are over
            self.told = {key: until for key, until in self.told.items() if until > now}
        key = (ask.platform, ask.user_id, ask.chat_id)
        if self.told.get(key, 0.0) > now:
            return False
        self.told[key] = now + max(refusal.retry_after, QUIET_AFTER_REFUSAL)
        return True

    async def _note_placeholder(self, request: _Request) -> None:
        """The status message is on screen: a restarted process will know which message to remove."""
        where = request.reply.placeholder()
        if where and self.journal is not None and request.ticket is not None:
            await self.journal.answer_to(request.ticket, {**request.ask.answer_to, **where})

    async def _follow(self, handle: JobHandle, request: _Request, *, answer: bool = True) -> None:
        """Progress, paced so platforms' edit rate limits are never hit (bot/pacing.py); then the answer (with
        ``answer`` False, a Done is only kept: the chain's next job answers)."""
        line = request.status_line()
        doing = kind_of(handle.job.kind).doing
        async for event in handle.events():
            if isinstance(event, Queued):
                await line.show("Waiting for my clay oven… you're next." if event.position == 1
                                else f"Queued, #{event.position}.")
            elif isinstance(event, Started):
                await line.show(doing)
            elif isinstance(event, Progress):
                await line.show(f"{doing} {event.step * 100 // max(1, event.total)}%")
            elif isinstance(event, Done) and not answer:
                request.done = event
            elif isinstance(event, Done):
                request.done = event
                await line.close()
                sent = await _safely(request.reply.result(event, caption(event)))
                request.outcome = "image" if sent else UNSENT
            elif isinstance(event, Failed):
                request.outcome = outcome_of(event.kind)
                if self.metrics is not None:
                    self.metrics.failure(event.kind.value)
                await line.last_turn()
                await _safely(request.reply.error(event.reason))

    async def _close(self, request: _Request) -> None:
        """The request is answered: the journal (and in its transaction, what the admission rules hold) and the
        metrics hear how it ended (a picture that could not be posted stays unanswered in the journal: a restarted
        claybot delivers it)."""
        if self.journal is not None and request.ticket is not None and request.outcome != UNSENT:
            try:
                await self.journal.answered(request.ticket, request.outcome)
            except ClaybotError as err:
                logger.error("journal: %s", err)
        if self.metrics is not None:
            self.metrics.request(request.ask.platform, request.outcome)
            if request.submitted is not None:
                self.metrics.job_finished(request.outcome, time.monotonic() - request.submitted)

    async def unanswered(self) -> list[Entry]:
        """The journal's unanswered jobs: read at start-up, before the front ends take new requests."""
        return await self.journal.unanswered() if self.journal is not None else []

    async def recover(self, front_ends: dict[str, FrontEnd], entries: list[Entry],
                      handles: Sequence[JobHandle] = ()) -> int:
        """After a restart, answer every job accepted before it (``entries``, from ``unanswered`` at start-up):
        those the queue still has (``handles``, Redis) when they finish, the others by running them again from
        the photo the journal kept. Returns how many."""
        if self.journal is not None:
            self.journal.platforms = frozenset(front_ends)
        by_job = {handle.id: handle for handle in handles}
        tasks: list[Coroutine[Any, Any, object]] = []
        for entry in entries:
            front_end = front_ends.get(entry.platform)
            if front_end is None:  # kept for when that front end runs again
                logger.warning("journal: job of %s in chat %s waits for the %s front end", entry.user_id,
                               entry.chat_id, entry.platform)
                continue
            handle = by_job.pop(entry.job_id, None) if entry.job_id else None
            tasks.append(self._recover(entry, handle, front_end))
        tasks += [resume(handle, front_ends) for handle in by_job.values()]  # in the queue, not in this journal
        for coroutine in tasks:
            self.recovering.add(asyncio.create_task(coroutine))
        return len(tasks)

    async def _recover(self, entry: Entry, handle: JobHandle | None, front_end: FrontEnd) -> None:
        with job_context(entry.job_id):
            outcome: str | None = NOT_COUNTED
            if handle is None:
                handle = await self._submit_again(entry, front_end)
            photo = entry.job.image if entry.job is not None else None  # the result may carry a copy
            if handle is not None and entry.then is not None and handle.job.kind != entry.then.kind:
                handle, outcome = await self._recover_then(entry, handle, front_end)
            if handle is not None:
                outcome = await resume(handle, {entry.platform: front_end}, entry.answer_to, photo)
            assert self.journal is not None  # entries come from the journal (``unanswered``)
            if outcome != UNSENT:  # else the next start tries again
                await self.journal.answered(entry.ticket, outcome or "failed")

    async def _recover_then(self, entry: Entry, handle: JobHandle, front_end: FrontEnd
                            ) -> tuple[JobHandle | None, str | None]:
        """A chained request the restart cut between its jobs: wait for the first job's answer, then submit the
        next job from it (journaled as the request's job), as a live request would. (handle, outcome so far)."""
        assert self.journal is not None and entry.then is not None  # entries come from the journal
        try:
            done = await handle.result()
            job = await self._next_job(entry.then, done, handle.job)
            next_handle = await self.queue.submit(job)
        except JobFailed as err:
            await _safely(front_end.deliver(entry.chat_id, None, str(err), entry.answer_to))
            return None, outcome_of(err.kind)
        except (QueueBusy, QueueClosed, BadRequest) as err:
            await _safely(front_end.deliver(entry.chat_id, None, str(err), entry.answer_to))
            return None, NOT_COUNTED
        await self.journal.queued(entry.ticket, next_handle.id, job)
        logger.info("journal: the chain of job %s goes on as %s (%s)", handle.id, next_handle.id, job.kind)
        return next_handle, None

    async def _submit_again(self, entry: Entry, front_end: FrontEnd) -> JobHandle | None:
        """The queue lost the job with the old process (local backend): submit it again from the journal."""
        if entry.job is None or entry.attempts >= MAX_RECOVERIES:
            text = LOST_DOWNLOADING if entry.job is None else GAVE_UP
            await _safely(front_end.deliver(entry.chat_id, None, text, entry.answer_to))
            return None
        try:
            handle = await self.queue.submit(entry.job)  # the same job: same seed, same working size
        except (QueueBusy, QueueClosed, BadRequest) as err:
            await _safely(front_end.deliver(entry.chat_id, None, str(err), entry.answer_to))
            return None
        assert self.journal is not None  # entries come from the journal (``unanswered``)
        await self.journal.requeued(entry.ticket, handle.id)
        logger.info("journal: job %s of user %s submitted again as %s", entry.job_id, entry.user_id, handle.id)
        return handle


UNSENT = "unsent"  # the picture was made but the platform would not take it: not answered, delivered after a restart
QUIET_AFTER_REFUSAL = 60.0  # seconds at least before the same person is told of a limit again
MAX_TOLD = 10_000  # people remembered as told, before those whose wait is over are forgotten
MAX_RECOVERIES = 2  # a job that two restarts in a row interrupted is not tried a third time
LOST_DOWNLOADING = "claybot restarted while fetching your photo; please send it again."
GAVE_UP = "claybot restarted twice while making this picture; please send the photo again later."


def outcome_of(kind: ErrorKind) -> str:
    """How a failed job counts: the person's photo, the chat's rating, claybot being busy, or a failure."""
    if kind in (ErrorKind.BAD_IMAGE, ErrorKind.TOO_LARGE):
        return "bad_input"
    if kind is ErrorKind.NOT_ALLOWED:
        return "refused"
    if kind in (ErrorKind.BUSY, ErrorKind.SHUTTING_DOWN, ErrorKind.CANCELLED):
        return NOT_COUNTED
    return "failed"


async def resume(handle: JobHandle, front_ends: dict[str, FrontEnd],
                 answer_to: dict[str, Any] | None = None, photo: bytes | None = None) -> str | None:
    """Answer a job accepted before a restart, in the chat it came from (``reply_to`` is (platform, chat id)),
    as a live answer looks (``photo``: the one it was made from, when the journal kept it); the outcome, or None
    when there is no front end to answer through."""
    if handle.job.reply_to is None or handle.job.reply_to[0] not in front_ends:  # the codec checks it is a pair
        logger.warning("recovered job %s has no front end to answer through (%r)", handle.id, handle.job.reply_to)
        return None
    platform, chat_id = handle.job.reply_to
    front_end = front_ends[platform]
    try:
        done = await handle.result()
    except JobFailed as err:
        await _safely(front_end.deliver(chat_id, None, str(err), answer_to or {}))
        return outcome_of(err.kind)
    if not await _safely(front_end.deliver(chat_id, done, caption(done), answer_to or {}, source=photo or None)):
        return UNSENT
    logger.info("recovered job %s answered in %s %s", handle.id, platform, chat_id)
    return "image"


class _Request:
    """One request on its way: its admission (its ticket in the journal), how it ended, and its result."""

    def __init__(self, ask: Ask, reply: _Acked, pacer: StatusPacer) -> None:
        self.ask, self.reply, self.pacer = ask, reply, pacer
        self.admitted: Admitted | None = None
        self.held = 0  # bytes of the photo budget this request holds
        self.submitted: float | None = None
        self.outcome = "failed"
        self.done: Done | None = None
        self.line: StatusLine | None = None  # its status line, once it was admitted

    def status_line(self) -> StatusLine:
        """Its one status line, paced with every other of its chat (bot/pacing.py)."""
        if self.line is None:
            self.line = self.pacer.line((self.ask.platform, self.ask.chat_id), self.reply.status)
        return self.line

    @property
    def ticket(self) -> int | None:
        return self.admitted.ticket if self.admitted is not None else None

    async def refuse(self, outcome: str, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        self.outcome = outcome
        if self.line is not None:  # the refusal takes the status line's place, at the chat's pace
            await self.line.last_turn()
        await _safely(self.reply.error(text, offer=offer))


class _Acked:
    """A Reply that times the first thing the user sees (the acknowledgement) for the metrics."""

    def __init__(self, reply: Reply, ask: Ask, metrics: Metrics | None) -> None:
        self.reply, self.ask, self.metrics = reply, ask, metrics
        self.acked = False
        self.on_first_status: Callable[[], Awaitable[None]] | None = None

    def _ack(self) -> None:
        if not self.acked:
            self.acked = True
            if self.metrics is not None:
                self.metrics.acknowledged(self.ask.platform, time.monotonic() - self.ask.received)

    async def status(self, text: str) -> None:
        self._ack()
        await self.reply.status(text)
        if self.on_first_status is not None:
            note, self.on_first_status = self.on_first_status, None
            await note()

    async def result(self, done: Done, caption: str) -> None:
        self._ack()
        await self.reply.result(done, caption)

    async def error(self, text: str, *, offer: Sequence[PackSettings] = ()) -> None:
        self._ack()
        if offer:
            await self.reply.error(text, offer=offer)
        else:  # a Reply written before credits may not take ``offer``
            await self.reply.error(text)

    @property
    def private(self) -> bool:
        return self.reply.private

    def placeholder(self) -> dict[str, Any]:
        return self.reply.placeholder()


async def _safely(awaitable: Awaitable) -> bool:
    """A status edit that fails (message deleted, rate limited) must not lose the job; whether it went out."""
    try:
        await awaitable
    except Exception as err:  # platform errors vary by library
        logger.warning("could not update the chat: %s", err)
        return False
    return True
