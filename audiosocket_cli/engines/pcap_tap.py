"""--pcap: each call's bytes, as its socket sent and received them, into one pcap file.

The engines' only contact with files.pcap_writer. A :class:`PcapFile` is the
file all of a command's calls share; :meth:`PcapFile.tap` starts one call's
TCP connection in it, with the real socket's addresses and ports, and returns
the :class:`PcapTap` its engine feeds: each recv() result (`received`), each
send()'s bytes that the kernel took (`sent`), and the call's end (`ended`),
which becomes a FIN or an RST from the side the call's `ended` token names.

A write error never reaches a call: the writer keeps it, and the file warns
once, naming the file and the OS reason (docs/output.md, "Files and their
errors"); the file stays valid up to its last whole packet.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from audiosocket_cli.files.pcap_writer import PcapStream, PcapWriter
from audiosocket_cli.protocol.session import Ended

# The side an `ended` token's first word names: '>' Asterisk's (the TCP client).
SIDES = {"caller": ">", "app": "<"}


class PcapFile:
    """The --pcap file of a command; `warn(text)` is told of a write error, once."""

    def __init__(self, writer: PcapWriter, warn: Callable[[str], None]) -> None:
        self.writer = writer
        self.warn = warn
        self._warned = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], warn: Callable[[str], None]) -> PcapFile:
        """Create the file and write its header now; OSError if it cannot be."""
        return cls(PcapWriter(path), warn)

    def tap(
        self, sock: socket.socket, we: str, peer: tuple[str, int] | None = None
    ) -> PcapTap | None:
        """A new connection for the call on `sock`; `we` is our side: '>' when we are
        Asterisk (the client: dial, play, replay), '<' when we are the application
        (listen, and capture toward Asterisk). `peer` is the address accept() gave:
        a caller that reset before we got to it has no getpeername() any more.
        None if the socket has no IP address: that call is left out of the file."""
        try:
            local = sock.getsockname()
            remote = sock.getpeername()
        except OSError:
            if peer is None:
                return None
            remote = peer
        client, server = (local, remote) if we == ">" else (remote, local)
        try:
            stream = self.writer.stream(client, server, time.time())
        except ValueError:
            return None
        self.check()
        return PcapTap(self, stream, we)

    def check(self) -> None:
        """Warn once if a write failed; the calls go on either way."""
        if self.writer.error is None or self._warned:
            return
        with self._lock:
            if self._warned:
                return
            self._warned = True
        self.warn(f"{self.writer.error}; the capture stops there, whole up to its last packet")

    def close(self) -> None:
        self.writer.close()
        self.check()


class PcapTap:
    """One call's TCP connection in the file, fed by its engine."""

    def __init__(self, file: PcapFile, stream: PcapStream, we: str) -> None:
        self.file = file
        self.stream = stream
        self.ours = we
        self.theirs = "<" if we == ">" else ">"
        self.peer_closed = False  # its end of stream came before ours

    def sent(self, data: bytes) -> None:
        """Bytes our socket took in one send (sendall's whole payload)."""
        if data:
            self.stream.data(self.ours, data, time.time())
            if self.file.writer.error is not None:
                self.file.check()

    def received(self, data: bytes | None) -> None:
        """One recv()'s bytes; b"" the peer's end of stream; None a reset (its token says)."""
        if data:
            self.stream.data(self.theirs, data, time.time())
            if self.file.writer.error is not None:
                self.file.check()
        elif data is not None:
            self.peer_closed = True

    # For capture's pipes: each read chunk, and how much of it went on at once.

    def received_chunk(self, data: bytes, sent: int) -> None:
        """From Asterisk: the chunk as read (where it went next is not in the file)."""
        self.received(data)

    def sent_chunk(self, data: bytes, sent: int) -> None:
        """To Asterisk: the part of the chunk the socket took."""
        if sent:
            self.sent(data if sent == len(data) else data[:sent])

    def ended(self, ended: Ended | None, closed_first: str | None = None) -> None:
        """The call is over: a FIN or RST as `ended` says. `closed_first` is the side
        whose end of stream came first, where the engine knows it (capture)."""
        if closed_first is None:
            closed_first = self.theirs if self.peer_closed else self.ours
        how, by = closing(ended, closed_first)
        self.stream.end(how, by, time.time())
        if self.file.writer.error is not None:
            self.file.check()


def closing(ended: Ended | None, closed_first: str) -> tuple[str, str]:
    """("fin" | "rst", the side that did it) for a call's ending.

    `*-reset`, and `truncated` by a reset, are an RST from that side; a close
    (`caller-close`, `app-close`, `truncated` by a close) a FIN from that side;
    any other ending (a hangup, a refusal, a timeout, Ctrl-C) a FIN from the
    side that closed first.
    """
    if ended is None:
        return "fin", closed_first
    side, _, what = ended.ended.partition("-")
    if side in SIDES and what in ("reset", "close"):
        return ("rst" if what == "reset" else "fin"), SIDES[side]
    if ended.ended == "truncated":
        detail = ended.detail
        by = (
            "<"
            if detail.startswith("the application")
            else ">"
            if detail.startswith("the caller")
            else closed_first
        )
        return ("rst" if "reset the connection" in detail else "fin"), by
    return "fin", closed_first
