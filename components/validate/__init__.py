"""Validate data: schema, ranges, nulls, label balance, and shift against the champion's reference."""
