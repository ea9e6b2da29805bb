"""ADDRESS as the README defines it: HOST:PORT, [IPv6]:PORT, PORT alone."""

from __future__ import annotations

import pytest

from audiosocket_cli.net.address import DEFAULT_HOST, Address, parse_address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9092", "127.0.0.1", 9092),
        ("10.1.2.3:1", "10.1.2.3", 1),
        ("localhost:65535", "localhost", 65535),
        ("asterisk.example.org:9093", "asterisk.example.org", 9093),
        ("9092", "127.0.0.1", 9092),
        ("0", "127.0.0.1", 0),
        (":9092", "127.0.0.1", 9092),
        ("[::1]:9092", "::1", 9092),
        ("[::]:0", "::", 0),
        ("[fe80::1%eth0]:5000", "fe80::1%eth0", 5000),
        ("[2001:db8::42]:9092", "2001:db8::42", 9092),
        ("  127.0.0.1:9092  ", "127.0.0.1", 9092),
        ("0.0.0.0:00080", "0.0.0.0", 80),
    ],
)
def test_parse(text: str, host: str, port: int) -> None:
    address = parse_address(text)
    assert address == Address(host, port)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("localhost", 9092, Address("localhost", 9092)),
        ("[::1]", 9093, Address("::1", 9093)),
        ("10.0.0.1:", 9092, Address("10.0.0.1", 9092)),
        ("10.0.0.1:7", 9092, Address("10.0.0.1", 7)),
        ("5", 9092, Address(DEFAULT_HOST, 5)),
    ],
)
def test_default_port(text: str, default: int, expected: Address) -> None:
    assert parse_address(text, default_port=default) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost", "no port"),
        ("[::1]", "no port"),
        ("host:", "no port"),
        ("::1", "[HOST]:PORT"),
        ("::1:9092", "[HOST]:PORT"),
        ("fe80::1:80", "[HOST]:PORT"),
        ("[::1", "[HOST]:PORT"),
        ("[]:9092", "[HOST]:PORT"),
        ("[::1]9092", "expected ':'"),
        ("[::1]:x", "'x' is not a number"),
        ("host:65536", "'65536' is not a number from 0 to 65535"),
        ("99999", "'99999' is not a number"),
        ("host:-1", "'-1' is not a number"),
        ("host:port", "'port' is not a number"),
        ("host:9 2", "is not a number"),
        ("host:²", "is not a number"),
        ("host:٣", "is not a number"),
    ],
)
def test_bad_addresses_raise_value_error_naming_the_problem(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("127.0.0.1", 9092), "127.0.0.1:9092"),
        (Address("::1", 9092), "[::1]:9092"),
        (Address("localhost", 0), "localhost:0"),
    ],
)
def test_str_round_trips(address: Address, text: str) -> None:
    assert str(address) == text
    assert parse_address(text) == address
