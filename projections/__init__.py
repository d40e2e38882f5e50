"""Read models: Cassandra tables, the Redis hot cache, and delivery publishing.

Every projection applies events as idempotent upserts keyed by ids from the event, so replays
and redeliveries change nothing.
"""
