"""Running `check`: the reference call, one case at a time, the application's health
between cases, and what a dead or refusing application means for the rest.

The rule that makes two runs against the same application give the same
verdicts: by default the cases run one at a time, in order, each on calls of
its own opened after the previous case's calls were closed and the
application was seen alive; every wait is bounded by the application's own
answer time (up to --answer-timeout), never by a fixed window; and a verdict
that our own lateness could have changed is a warn ("measurement
disturbed"), never a fail. `--parallel N` runs up to N cases of sections 1
and 2 at once, for applications that can take it: faster, and no longer
that promise.
"""

from __future__ import annotations

import select
import threading
import time
import uuid as uuid_lib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from audiosocket_cli.engines.before_call import BeforeCallFailed, CallUUIDs
from audiosocket_cli.engines.check.probe import (
    CLOSE_LIMIT,
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_TIMEOUT,
    Case,
    CaseRun,
    Probe,
    Run,
    audio_frames,
    tone,
)
from audiosocket_cli.engines.check.results import (
    FAIL,
    PASS,
    SECTIONS,
    Outcome,
    Report,
    Result,
    Unreachable,
    failed,
)
from audiosocket_cli.engines.check.suite import BY_ID, CASES
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.transport import CONNECT_TIMEOUT, connect
from audiosocket_cli.protocol.session import Mode, Rules
from audiosocket_cli.protocol.wire import Message

ALIVE_WATCH = 0.25  # s a thorough liveness probe watches its connection
REFERENCE_AUDIO = 0.4  # s of our audio in the reference call, before waiting for an answer


class Refused(Exception):
    """The application accepted the reference call and never served it."""


def reach(run: Run) -> bool:
    """The reference call, before anything else: can the application be reached at
    all (Unreachable if not), does it serve a call (Refused if it accepts and then
    neither answers nor closes, or closes at once), and does it answer with audio
    (waited for up to --answer-timeout, the call going on)?"""
    try:
        p = Probe(run, "reach")
    except BeforeCallFailed as exc:
        raise Unreachable(str(exc)) from None
    except OSError as exc:
        raise Unreachable(str(exc)) from None
    p.send_uuid()
    p.play(audio_frames(tone(8000, REFERENCE_AUDIO), 8000))
    p.await_answer(0.0)
    answers = p.audio_after(0) > 0
    first = p.stats["<"].first_audio
    if answers and first is not None and p.first_audio_sent is not None:
        run.reference_first_audio = max(0.0, first - p.first_audio_sent)
        p.pause(0.2)
    ended = p.app_ended()
    p.close()
    if answers:
        return True
    if ended is not None:
        raise Refused(
            f"the application ended the reference call without a word: {ended}. Does it "
            "need the call's UUID registered first (--before-call, --uuid)?"
        )
    closed, _ = p.closed_by_app(CLOSE_LIMIT)
    if closed is False and not p.raw:
        raise Refused(
            "the application accepted the reference call but never served it: nothing "
            f"came back in {run.answer_timeout:g} s and it left the socket open after "
            "Asterisk's close (CLOSE-WAIT). Does it need the call's UUID registered first "
            "(--before-call, --uuid)?"
        )
    return False


def alive(run: Run, thorough: bool = False) -> str | None:
    """A liveness probe: a connect (and a close). None if the application accepted
    it, else why not. `thorough` (after a case that did not pass: a crash may be
    under way) also sends a UUID and a frame and watches the connection for
    ALIVE_WATCH: a dying process's listening socket can still take a connection
    and then reset it, so a connection cut at once is tried again."""
    for attempt in range(2):
        try:
            sock = connect(run.address, timeout=min(CONNECT_TIMEOUT, run.timeout))
        except OSError as exc:
            return str(exc)
        try:
            if not thorough:
                return None
            cut = False
            try:
                sock.sendall(Message.for_uuid(str(uuid_lib.uuid4())).encode())
                sock.sendall(Message.audio(bytes(320), 8000).encode())
                deadline = time.monotonic() + ALIVE_WATCH
                while (left := deadline - time.monotonic()) > 0:
                    readable, _, _ = select.select([sock], [], [], left)
                    if readable and not sock.recv(65536):
                        cut = True
                        break
            except OSError:
                cut = True
            if not cut:
                return None
        finally:
            sock.close()
        if attempt == 0:
            time.sleep(ALIVE_WATCH)
    return None


def run_case(run: Run, case: Case) -> Result:
    """One case in a thread of its own, abandoned if it outlives its plan by --timeout
    (and by --answer-timeout, which a slow speaker may take in its calls)."""
    cr = CaseRun(run, case.id)
    box: dict[str, Outcome] = {}
    started = time.monotonic()

    def body() -> None:
        try:
            box["outcome"] = case.func(cr)
        except BeforeCallFailed as exc:
            box["outcome"] = failed(f"the call was not placed: {exc}")
        except OSError as exc:
            if cr.aborted:
                return
            box["outcome"] = failed(f"the connection failed: {exc.strerror or exc}")
        except Exception as exc:  # a bug of ours is reported, not hidden in a pass
            box["outcome"] = failed(f"the check itself failed: {type(exc).__name__}: {exc}")

    limit = case.planned + run.timeout + (run.answer_timeout if case.places_calls else 0.0)
    thread = threading.Thread(target=body, name=f"case-{case.id}", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        cr.abort()
        thread.join(1.0)
        outcome = failed(
            f"the case did not finish within {limit:.1f} s (its plan {case.planned:g} s "
            f"+ --timeout {run.timeout:g} s + --answer-timeout {run.answer_timeout:g} s)"
        )
    else:
        outcome = box.get("outcome") or failed("the case was abandoned")
    for probe in cr.probes:  # whatever the case left open
        probe.close()
    return Result(
        case.id,
        case.section,
        case.name,
        outcome.verdict,
        outcome.reason,
        outcome.evidence,
        outcome.t,
        time.monotonic() - started,
        outcome.figures,
    )


def run_check(
    address: Address,
    cases: list[Case],
    *,
    rules: Rules | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
    parallel: int = 1,
    uuids: CallUUIDs | None = None,
    before_call: str | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> Report:
    """Run the cases (and the calls they read) against the application at `address`.

    Raises Unreachable, before any case, if it cannot be reached at all.
    """
    rules = rules or Rules(mode=Mode.LENIENT, inactivity=None)
    run = Run(
        address,
        rules,
        timeout,
        answer_timeout,
        uuids=uuids or CallUUIDs(),
        before_call=before_call,
    )
    started = time.monotonic()
    chosen = {case.id for case in cases}
    needed = {n for case in cases for n in case.needs} - chosen
    results: dict[str, Result] = {}
    halted = [""]

    def report(result: Result) -> None:
        if result.id in chosen:
            results[result.id] = result
            if on_result is not None:
                on_result(result)

    try:
        run.answers = reach(run)
    except Refused as exc:
        halted[0] = str(exc)
        run.answers = False
    todo = [c for c in CASES if c.id in chosen or c.id in needed]

    def skip_rest(batch: list[Case]) -> None:
        for case in batch:
            report(Result(case.id, case.section, case.name, "skip", halted[0], "", None, 0.0))

    def after_case(result: Result) -> None:
        """The application's health after a case that placed calls: a death is said
        once, by the case it followed, and the rest are skipped for it."""
        why = alive(run, thorough=result.verdict != PASS)
        if why is None:
            return
        halted[0] = f"the application stopped accepting connections after case {result.id}"
        result.verdict = FAIL
        result.reason = f"{halted[0]} ({why}); in this case: {result.reason}"

    def one_at_a_time(batch: list[Case]) -> None:
        for k, case in enumerate(batch):
            if halted[0]:
                skip_rest(batch[k:])
                return
            result = run_case(run, case)
            if case.places_calls:
                after_case(result)
            report(result)

    def phase(section: int, batch: list[Case], at_once: int = 1) -> None:
        if not batch:
            return
        if on_phase is not None:
            on_phase(SECTIONS[section])
        if halted[0]:
            skip_rest(batch)
            return
        if at_once <= 1 or len(batch) == 1:
            one_at_a_time(batch)
            return
        with ThreadPoolExecutor(max_workers=min(at_once, len(batch))) as pool:
            done = list(pool.map(lambda c: run_case(run, c), batch))
        for result in sorted(done, key=lambda r: CASES.index(BY_ID[r.id])):
            report(result)
        why = alive(run, thorough=any(r.verdict != PASS for r in done))
        if why is not None:
            halted[0] = f"the application stopped accepting connections during section {section}"

    def take(
        section: int, *, only: set[str] | None = None, skip: tuple[str, ...] = ()
    ) -> list[Case]:
        return [
            c
            for c in todo
            if c.section == section and (only is None or c.id in only) and c.id not in skip
        ]

    phase(1, take(1), parallel)
    phase(2, take(2, skip=("2.11",)), parallel)
    phase(2, take(2, only={"2.11"}))
    phase(3, take(3))
    phase(4, take(4))  # one at a time: each may hurt the application
    ordered = [results[c.id] for c in CASES if c.id in results]
    return Report(address, ordered, run.answers, time.monotonic() - started, halted[0])
