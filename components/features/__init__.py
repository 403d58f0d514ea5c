"""Features: compute the batch feature tables, `feast apply`, and materialize into the online store."""
