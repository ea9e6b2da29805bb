"""The one output layer: human (rich), plain lines, JSON lines, trace files."""
