"""Automatic exclusion of broken queues: policies (pure), safety guards (pure), actuation (I/O)."""
