"""Training set: point-in-time correct features for labelled events, split by time."""
