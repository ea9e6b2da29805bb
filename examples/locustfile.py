"""Locust load test of an AudioSocket application: batches of calls per Locust user.

    pip install 'audiosocket-cli[locust]'
    locust -f examples/locustfile.py --host 127.0.0.1:9092 --headless \
        -u 10 -r 2 --run-time 1m --processes 2 --csv run --stop-timeout 30

Each user runs AUDIOSOCKET_LOAD_CALLS calls at a time (default 10) of
AUDIOSOCKET_LOAD_DURATION seconds (default 5), again and again; so -u 10 is
100 calls at once. See docs/load.md, "Locust".
"""

from __future__ import annotations

import os

from audiosocket_cli.locust import AudioSocketUser


class AsteriskCalls(AudioSocketUser):
    calls = int(os.environ.get("AUDIOSOCKET_LOAD_CALLS", "10"))
    call_rate = float(os.environ.get("AUDIOSOCKET_LOAD_RATE", "10"))
    call_duration = float(os.environ.get("AUDIOSOCKET_LOAD_DURATION", "5"))
    source = os.environ.get("AUDIOSOCKET_LOAD_SOURCE", "silence")
