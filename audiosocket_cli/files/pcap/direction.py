"""One direction of a TCP connection: its bytes put back in order by sequence number
(early bytes wait, retransmitted ones are taken once), holes declared gaps when the
bytes will not come, then decoded into messages, from the next message boundary
after a gap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from audiosocket_cli.files.pcap.boundary import LOOSE_AFTER, RESYNC_MAX_AUDIO, _chain, _split
from audiosocket_cli.files.pcap.packets import Endpoint
from audiosocket_cli.protocol.wire import AUDIO_RATES, Decoder, TruncatedMessage

if TYPE_CHECKING:
    from audiosocket_cli.files.pcap.flow import _Flow

UUID_HEADER = b"\x01\x00\x10"
SEQ_MOD = 1 << 32
GAP_GRACE = 0.05  # s a hole the peer has acknowledged past may still fill (capture order)
GAP_TIMEOUT = 3.0  # s a hole may stay open when nothing says the bytes are lost
PENDING_LIMIT = 1 << 20  # bytes per direction held behind a hole


class _Direction:
    """One direction of a connection: reassembly by sequence number, then decoding."""

    def __init__(self, flow: _Flow, src: Endpoint) -> None:
        self.flow = flow
        self.src = src
        self.arrow = "?"
        self.isn: int | None = None
        self.base: int | None = None  # sequence number of the stream's first byte
        self.midstream = False
        self.delivered = 0  # stream offset of the next byte due in order
        self.pending: dict[int, tuple[bytes, float]] = {}  # offset -> early bytes, arrival
        self.pending_bytes = 0
        self.acked = 0  # stream offset the peer has acknowledged up to
        self.fin_at: int | None = None
        self.hole_since: float | None = None
        self.ended = False
        self.closed_out = False
        self.head = b""
        self.decoder = Decoder()
        self.resync: bytearray | None = None  # bytes being searched for a message boundary
        self.resync_times: list[tuple[int, float]] = []  # where each chunk starts, its time
        self.resync_loose = False
        self.skipped = 0
        self.last_emitted = flow.start_ts
        self.audio_kinds: set[int] = set()  # what this side sent, to know a boundary again
        self.largest_audio = 0

    # Sequence numbers to stream offsets.

    def set_isn(self, isn: int) -> None:
        self.isn = isn
        self.set_base((isn + 1) % SEQ_MOD)

    def set_base(self, base: int) -> None:
        if self.base is None:
            self.base = base

    def offset(self, seq: int) -> int:
        """The stream offset of a sequence number, unwrapped near what was delivered."""
        assert self.base is not None
        diff = (seq - self.base - self.delivered) % SEQ_MOD
        if diff >= SEQ_MOD // 2:
            diff -= SEQ_MOD
        return self.delivered + diff

    # Reassembly.

    def add(self, ts: float, seq: int, data: bytes) -> None:
        if self.ended:
            return
        if self.base is None:
            self.base = seq  # no SYN seen: the stream starts where the capture does
            self.midstream = True
            if self.flow.state == "audiosocket":
                self.start_midstream()
        start = self.offset(seq)
        end = start + len(data)
        if end <= self.delivered:
            return  # a retransmission of bytes already taken
        if start < self.delivered:
            data = data[self.delivered - start :]  # overlaps what was taken: the rest only
            start = self.delivered
        if start == self.delivered:
            self.deliver(ts, data)
            self.drain(ts)
        else:
            known = self.pending.get(start)
            if known is None or len(known[0]) < len(data):
                self.pending_bytes += len(data) - (len(known[0]) if known else 0)
                self.pending[start] = (data, known[1] if known else ts)
            self.open_hole(ts)

    def drain(self, ts: float, late: bool = False) -> None:
        """Take the early bytes that are now due: at `ts`, or (late) when they came."""
        if self.pending:
            for start in sorted(self.pending):
                if start > self.delivered:
                    break
                data, arrived = self.pending.pop(start)
                self.pending_bytes -= len(data)
                if start + len(data) > self.delivered:
                    self.deliver(
                        max(arrived, ts) if not late else arrived, data[self.delivered - start :]
                    )
        if self.pending or self.acked > self.delivered or self._fin_beyond():
            # A hole stays open since the earliest bytes waiting behind it came.
            waiting = [arrived for _, arrived in self.pending.values()]
            self.open_hole(min([ts, *waiting]))
        else:
            self.hole_since = None
            self.flow.capture.holed.discard(self)

    def open_hole(self, ts: float) -> None:
        if self.hole_since is None:
            self.hole_since = ts
            self.flow.capture.holed.add(self)

    def _fin_beyond(self) -> bool:
        return self.fin_at is not None and self.fin_at > self.delivered

    def deliver(self, ts: float, data: bytes) -> None:
        self.delivered += len(data)
        if len(self.head) < len(UUID_HEADER):
            self.head += data[: len(UUID_HEADER) - len(self.head)]
        if self.flow.state == "undecided":
            self.flow.hold(ts, self, data)
        else:
            self.consume(ts, data)

    def acknowledged(self, ts: float, ack: int) -> None:
        offset = self.offset(ack)
        if self.fin_at is not None:
            offset = min(offset, self.fin_at)  # the FIN takes a sequence number, not a byte
        if offset > self.acked:
            self.acked = offset
            if offset > self.delivered:
                self.open_hole(ts)

    def fin(self, ts: float, seq: int) -> None:
        if self.base is None:
            return
        self.fin_at = self.offset(seq)
        self.acked = min(self.acked, self.fin_at)
        if self.fin_at > self.delivered:
            self.open_hole(ts)
        else:
            self.end_stream(ts)

    def check_hole(self, ts: float) -> None:
        """Declare a gap where the capture must have missed bytes; end at the FIN."""
        if self.ended:
            return
        if self.hole_since is not None:
            confirmed = self.acked > self.delivered or self._fin_beyond()
            waited = ts - self.hole_since
            if (
                (confirmed and waited >= GAP_GRACE)
                or waited >= GAP_TIMEOUT
                or self.pending_bytes > PENDING_LIMIT
            ):
                self.skip_hole(ts)
        if self.fin_at is not None and self.delivered >= self.fin_at:
            self.end_stream(ts)

    def skip_hole(self, ts: float) -> None:
        # Resume at the first bytes we have, else where the peer says the stream got to.
        target = min(self.pending) if self.pending else max(self.acked, self.fin_at or 0)
        when = min(ts, self.hole_since) if self.hole_since is not None else ts
        if not self.pending and self.fin_at is None and target == self.delivered + 1:
            # One sequence number acknowledged beyond the data: a FIN the capture missed.
            self.fin_at = self.acked = self.delivered
            self.hole_since = None
            self.flow.capture.holed.discard(self)
            return
        if target > self.delivered:
            missing = target - self.delivered
            if self.flow.state == "audiosocket":
                cut = self._cut_message()
                self.flow.warn(
                    when,
                    f"gap in the capture: {missing} bytes missing in {self.flow.label(self)} "
                    f"at stream byte {self.delivered}{cut}; decoding resumes at the next "
                    "message boundary",
                    missing=missing,
                    offset=self.delivered,
                    direction=self,
                )
                self.decoder = Decoder()
                self.resync, self.resync_times, self.skipped = bytearray(), [], 0
                self.resync_loose = False
            self.delivered = target
        self.hole_since = None
        self.drain(ts, late=True)

    def _cut_message(self) -> str:
        if self.resync is not None:
            lost = len(self.resync) + self.skipped
            return f" (the {lost} bytes before it had no message boundary)" if lost else ""
        have = self.decoder.buffered
        return f" (a message {have} bytes in is lost with it)" if have else ""

    def flush(self, ts: float, reason: str) -> None:
        """The connection ends: whatever waits behind holes is taken, the rest ends."""
        if self.ended:
            return
        while self.pending or self.acked > self.delivered or self._fin_beyond():
            before = self.delivered
            self.skip_hole(ts)
            if self.delivered == before:
                break
        self.end_stream(ts, reason)

    # Decoding.

    def start_midstream(self) -> None:
        """Bytes from the middle of a stream: find where a message begins."""
        self.resync, self.resync_times, self.skipped = bytearray(), [], 0
        self.resync_loose = False
        self.flow.midstream()

    def consume(self, ts: float, data: bytes) -> None:
        if self.resync is not None:
            # Each chunk keeps its time, to be decoded with it once a boundary is found.
            self.resync_times.append((len(self.resync), ts))
            self.resync += data
            self._search(ts, final=False)
            return
        decoder = self.decoder
        decoder.feed(data)
        for message in decoder.messages():
            kind = message.kind
            if kind in AUDIO_RATES:
                self.audio_kinds.add(kind)
                if len(message.payload) > self.largest_audio:
                    self.largest_audio = len(message.payload)
            self.flow.message(ts, self, message)

    def _search(self, ts: float, final: bool) -> None:
        """Find the next message boundary in self.resync and decode from there."""
        buf = self.resync
        assert buf is not None
        found, i = self._scan(buf, final, strict=not self.resync_loose)
        if found is None and not self.resync_loose:
            if final:
                found, i = self._scan(buf, final, strict=False)
            elif self.skipped + i > LOOSE_AFTER:
                # No run of equal frames for a long stretch: this side's messages
                # vary in length, so accept a longer run of any plausible ones.
                self.resync_loose = True
        if found is None:
            self.skipped += i
            self._drop(i)
            if final:
                self.skipped += len(buf)
                buf.clear()
                if self.skipped:
                    self.flow.warn(
                        ts,
                        f"no message boundary found in {self.flow.label(self)}: "
                        f"the last {self.skipped} bytes were skipped",
                        skipped=self.skipped,
                        direction=self,
                    )
            return
        self._drop(found)
        chunks = _split(buf, self.resync_times)
        skipped = self.skipped + found
        self.resync, self.resync_times, self.skipped = None, [], 0
        if skipped:
            self.flow.warn(
                chunks[0][0],
                f"skipped {skipped} bytes in {self.flow.label(self)} to the next message boundary",
                skipped=skipped,
                direction=self,
            )
        self.decoder = Decoder()
        for when, data in chunks:
            self.consume(when, data)

    def _scan(self, buf: bytearray, final: bool, strict: bool) -> tuple[int | None, int]:
        """(where a boundary is, or None; how far the search could rule bytes out)."""
        if strict:
            # What this side sent before the gap is what it sends after: the same
            # audio kinds, frames no larger. That keeps audio from passing for headers.
            kinds: Any = self.audio_kinds or AUDIO_RATES.keys()
            largest = self.largest_audio or RESYNC_MAX_AUDIO
        else:
            kinds, largest = AUDIO_RATES.keys(), RESYNC_MAX_AUDIO
        i = 0
        while i < len(buf):
            verdict = _chain(buf, i, final, kinds, largest, strict)
            if verdict is None:
                return None, i  # cannot tell yet: wait for more bytes
            if verdict:
                return i, i
            i += 1
        return None, i

    def _drop(self, n: int) -> None:
        """Forget the first n bytes being searched (and the times of chunks gone with them)."""
        assert self.resync is not None
        del self.resync[:n]
        times = [(start - n, when) for start, when in self.resync_times]
        while len(times) > 1 and times[1][0] <= 0:
            times.pop(0)
        if times:
            times[0] = (0, times[0][1])
        self.resync_times = times

    def head_verdict(self) -> bool | None:
        """Does this direction begin with a UUID message? None: not enough bytes yet."""
        if len(self.head) < len(UUID_HEADER):
            return None
        return self.head == UUID_HEADER

    def end_stream(self, ts: float, reason: str = "") -> None:
        """No more bytes come this way: decode what is left, say what was cut."""
        self.ended = True
        self.flow.capture.holed.discard(self)
        if self.flow.state != "audiosocket" or self.closed_out:
            return
        self.closed_out = True
        if self.resync is not None:
            self._search(ts, final=True)
            if self.resync is not None:
                return
        try:
            self.decoder.end_of_stream()
        except TruncatedMessage as exc:
            for message in self.decoder.messages():
                self.flow.message(ts, self, message)
            text = (
                f"{reason or 'the stream ended'} inside a message in {self.flow.label(self)}: {exc}"
            )
            # Cut by its own end (a FIN or a reset) it broke the protocol; cut by the
            # capture stopping, it did not.
            by_peer = reason in ("", "the connection was reset")
            if by_peer and self.flow.cut is None:
                self.flow.cut = text
            self.flow.warn(ts, text, missing=exc.missing, direction=self, violation=by_peer)
