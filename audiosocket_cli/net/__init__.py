"""Sockets and time: addresses, connections, the selector loop, drift-free pacing."""
