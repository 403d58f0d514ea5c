"""Evaluate: test metrics of the model, the rule baseline and the champion on the same data; model card."""
