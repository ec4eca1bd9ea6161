"""sklm-watcher: watch SKLM / GKLM servers restore from backup and report every phase."""

__version__ = "0.1.0"
