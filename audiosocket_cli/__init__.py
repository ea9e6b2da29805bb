"""audiosocket-cli: test and debug tool for Asterisk's AudioSocket protocol.

From Python, a scripted conversation with a voice bot (see docs/converse.md)::

    from audiosocket_cli import converse
    result = converse("127.0.0.1:9092")            # the built-in scenario
    assert result.passed, result.report()
    assert result.turns[0].latency < 1.0

The names in __all__ are imported on first use: `import audiosocket_cli` (and
so `audiosocket --help`) stays free of numpy and the engines; and every module
that reads the version does not depend on the engines (import-linter's layers).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "converse": "audiosocket_cli.engines.converse",
    "Conversation": "audiosocket_cli.engines.converse",
    "ConversationResult": "audiosocket_cli.engines.converse",
    "TurnResult": "audiosocket_cli.engines.converse",
    "BargeInResult": "audiosocket_cli.engines.converse",
    "Expectation": "audiosocket_cli.engines.converse",
    "Scenario": "audiosocket_cli.engines.converse",
    "ScenarioError": "audiosocket_cli.engines.converse",
    "Step": "audiosocket_cli.engines.converse",
    "Thresholds": "audiosocket_cli.engines.converse",
    "StereoRecording": "audiosocket_cli.engines.converse",
    "load_scenario": "audiosocket_cli.engines.converse",
    "parse_scenario": "audiosocket_cli.engines.converse",
}

__all__ = [  # noqa: F822 - each name but the version comes through __getattr__
    "__version__",
    "converse",
    "Conversation",
    "ConversationResult",
    "TurnResult",
    "BargeInResult",
    "Expectation",
    "Scenario",
    "ScenarioError",
    "Step",
    "Thresholds",
    "StereoRecording",
    "load_scenario",
    "parse_scenario",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'audiosocket_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
