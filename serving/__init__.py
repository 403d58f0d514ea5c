"""The KServe model server: the transformer (Feast online features, model input) and the predictor (the model)."""
