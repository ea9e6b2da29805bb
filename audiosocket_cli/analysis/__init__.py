"""What a call did, measured: levels, per-direction statistics, diagnoses."""
