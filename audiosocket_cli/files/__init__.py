"""Files calls are kept in: trace files, raw dumps, packet captures."""
