"""Register: the promotion gate, then an MLflow model version with lineage tags and aliases."""
