"""Curation: the review queue, its SQLite database, card media, and publishing after review."""
