"""History: pytest runs kept as asv results, compared with earlier commits, and shown on asv's dashboard."""
