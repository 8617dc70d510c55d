"""User support tickets: ingestion, what they name, and their links to degraded queues."""
