"""Integration tests of the stores against real databases (PostgreSQL: ``pg_url``)."""
