"""Ingest: produce (generate) or load the raw transaction snapshot and fingerprint it."""
