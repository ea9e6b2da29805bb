"""A scripted conversation, without sockets: the scenario (TOML), the script that plays
it frame by frame and hears the agent (script), the figures from both timelines
(measures), the expectations judged (verdicts), and what they give the API and
the output (results). The engines that place the calls are converse (one call)
and load (`--scenario`, one per call).
"""
