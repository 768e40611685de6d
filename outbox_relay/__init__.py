"""The outbox relay: turns outbox events into legacy rows, exactly once."""
