"""`audiosocket converse`: a scripted caller that holds a conversation with a voice bot
and measures it: time to first response, response latency per turn, barge-in stop
time, talk-over, dead air; each expectation judged, a stereo recording of both sides.

The call is runner's (on the dial engine). What it plays and judges is
engines.conversation's, shared with `load --scenario`: scenario (the script, read
from TOML), script (the scenario as a frame source, the agent heard through the
speech detector), measures (the figures from the two timelines), verdicts (the
expectations, JUnit XML), results (what the API returns, the events the output
shows). The two-channel recording is media.stereo's StereoRecording (re-exported
here).
"""

from audiosocket_cli.engines.conversation.results import (
    BargeInResult,
    ConversationResult,
    ConverseEvent,
    TurnResult,
)
from audiosocket_cli.engines.conversation.scenario import (
    Scenario,
    ScenarioError,
    Step,
    load_scenario,
    parse_scenario,
    shipped_utterances,
)
from audiosocket_cli.engines.conversation.verdicts import Expectation, Thresholds, junit_xml
from audiosocket_cli.engines.converse.runner import Conversation, converse
from audiosocket_cli.media.stereo import StereoRecording

__all__ = [
    "BargeInResult",
    "Conversation",
    "ConversationResult",
    "ConverseEvent",
    "Expectation",
    "Scenario",
    "ScenarioError",
    "Step",
    "StereoRecording",
    "Thresholds",
    "TurnResult",
    "converse",
    "junit_xml",
    "load_scenario",
    "parse_scenario",
    "shipped_utterances",
]
