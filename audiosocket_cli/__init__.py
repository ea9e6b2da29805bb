"""audiosocket-cli: test and debug tool for Asterisk's AudioSocket protocol."""

__version__ = "0.1.0"
