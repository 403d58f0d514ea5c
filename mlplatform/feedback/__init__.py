"""The feedback loop: the Alertmanager webhook that starts retraining, and its run launchers."""
