"""Engines, one per command that runs calls: listen, dial, capture, replay."""
