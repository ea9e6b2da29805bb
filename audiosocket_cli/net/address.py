"""ADDRESS as users type it: `HOST:PORT`, `[IPv6]:PORT`, or `PORT` alone."""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_HOST = "127.0.0.1"


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _is_number(text: str) -> bool:
    # ASCII only: str.isdigit() also accepts '²' (which int() refuses) and other scripts' digits.
    return text.isascii() and text.isdigit()


def parse_address(text: str, default_port: int | None = None) -> Address:
    """Parse ADDRESS; raise ValueError naming what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"{text!r}: an IPv6 address is written [HOST]:PORT")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':' after ']'")
        port_text = rest[1:] if rest else ""
    elif _is_number(text):
        host, port_text = DEFAULT_HOST, text
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"{text!r}: write an IPv6 address as [HOST]:PORT")
    else:
        host, port_text = text, ""
    if any(c.isspace() for c in host):
        # No host name or address has one; and '[ ::1]:9092' would print as ' ::1:9092'.
        raise ValueError(f"{text!r}: a host has no spaces")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: no port (HOST:PORT)")
        return Address(host or DEFAULT_HOST, default_port)
    if not _is_number(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number from 0 to 65535")
    return Address(host or DEFAULT_HOST, int(port_text))
