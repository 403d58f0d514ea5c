"""Raw data of the reference workload: the transaction schema and generator, and the delayed-label feed."""
