"""Notification sinks: deliver one event somewhere and classify the failure."""
