"""relay's performance benchmark: ``make bench``; see docs/performance.md."""
