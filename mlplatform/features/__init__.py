"""Features shared by training and serving (batch aggregates, request-time features) and Feast access."""
