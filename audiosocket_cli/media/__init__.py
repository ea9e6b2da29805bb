"""Sound: files read and resampled, frame sources, recordings, live devices."""
