"""Data sources and the prepared-split format."""
