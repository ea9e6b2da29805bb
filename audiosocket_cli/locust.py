"""Locust integration: `AudioSocketUser`, a Locust User that runs a batch of calls.

Beyond one machine, Locust distributes users over processes and hosts
(`--processes`, `--master/--worker`) and gives its web UI and `--csv`. Each
AudioSocketUser instance runs `calls` calls at a time through the same engine
as `audiosocket load` (engines.load.Worker: one selector loop for the batch,
every frame of a 20 ms tick sent in one pass), never a greenlet per call.

What Locust sees, as request statistics (request type "audiosocket"):

- "call": one per call, its length as the response time; a call that did not
  end normally is a failure named by its `ended` token (or connect failure);
- "time to first audio": one per call that got audio from the application;
- "echo round trip": once per second per user, the median of that second's
  echoed frames (response length: how many);
- "send lateness": once per second per user, the p99 of our own lateness.

Calls cut short by Locust stopping a user are not reported. Locust is an
optional extra: `pip install 'audiosocket-cli[locust]'`; this is the only
module that imports it.
"""

from __future__ import annotations

from typing import Any

from gevent import GreenletExit
from locust import User, constant, task

from audiosocket_cli.engines.load import STOPPED_ENDINGS, Histogram, LoadPlan, Worker
from audiosocket_cli.net.address import parse_address
from audiosocket_cli.protocol.events import CallEnd

REQUEST_TYPE = "audiosocket"


class AudioSocketUser(User):
    """Runs batches of AudioSocket calls against `host` (HOST:PORT), as Asterisk does.

    Set the class attributes in a subclass (examples/locustfile.py).
    """

    abstract = True
    wait_time = constant(0)
    calls = 10  # calls per batch (at once, at most)
    call_rate = 10.0  # new calls per second within a batch
    call_duration = 5.0  # seconds per call
    sample_rate = 8000
    source = "silence"  # silence | tone | none
    tone_hz = 440.0
    lenient = False

    def on_start(self) -> None:
        from audiosocket_cli.analysis.stats import ULAW_TABLE

        ULAW_TABLE()  # numpy now, not while the first frames are due

    def plan(self) -> LoadPlan:
        from audiosocket_cli.protocol.session import INACTIVITY, PAYLOAD_WINDOW, Mode, Rules

        if not self.host:
            raise ValueError("set --host HOST:PORT (the AudioSocket application)")
        return LoadPlan(
            address=parse_address(str(self.host), 9092),
            calls=self.calls,
            rate=self.call_rate,
            duration=self.call_duration,
            total=self.calls,
            sample_rate=self.sample_rate,
            source=self.source,
            tone_hz=self.tone_hz,
            rules=Rules(
                mode=Mode.LENIENT if self.lenient else Mode.STRICT,
                payload_window=PAYLOAD_WINDOW,
                inactivity=INACTIVITY,
            ),
            period=1.0,
        )

    @task
    def batch(self) -> None:
        """One batch of calls, to its end."""
        worker = Worker(
            self.plan(),
            on_period=self._period,
            on_call_end=self._call_end,
            on_ttfa=self._ttfa,
        )
        try:
            worker.run()
        except GreenletExit:
            worker.stop()
            raise

    def _fire(self, name: str, ms: float, length: int = 0, exception: Any = None) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=ms,
            response_length=length,
            exception=exception,
            context={},
        )

    def _call_end(self, end: CallEnd | None, reason: str, seconds: float) -> None:
        if reason in STOPPED_ENDINGS:
            return
        from audiosocket_cli.engines.load import NORMAL_ENDINGS

        failed = end is None or reason not in NORMAL_ENDINGS or end.broke_protocol
        exception = CallFailed(reason) if failed else None
        self._fire("call", seconds * 1000, exception=exception)

    def _ttfa(self, seconds: float) -> None:
        self._fire("time to first audio", seconds * 1000)

    def _period(self, record: dict[str, Any]) -> None:
        echo, late = Histogram(), Histogram()
        echo.merge(record["echo"])
        late.merge(record["late"])
        if echo.n:
            self._fire("echo round trip", (echo.percentile(50) or 0.0) * 1000, echo.n)
        if late.n:
            self._fire("send lateness", (late.percentile(99) or 0.0) * 1000, late.n)


class CallFailed(Exception):
    """A call that did not end normally; its text is the reason (an `ended` token)."""
