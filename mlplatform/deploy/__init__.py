"""Deploying a registered version: its verified artifact and the InferenceService on a cluster."""
