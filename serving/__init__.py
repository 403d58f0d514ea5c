"""Online inference (KServe predictor and Feast transformer): not built yet, see docs/architecture.md."""
