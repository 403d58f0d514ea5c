"""The fraud model: an MLP with its input normalisation, saved as safetensors plus JSON (no pickle)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
REFERENCE_STATS_FILE = "reference_stats.json"


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model and use its scores.

    Attributes:
        feature_names: Input features, in input order.
        hidden_units: Width of each hidden layer.
        dropout: Dropout probability after each hidden layer (training only).
        threshold: Operating threshold on the score: at or above it, a transaction is flagged.
        metadata: Free-form facts about the model (version of the features, training data hash).
    """

    feature_names: list[str]
    hidden_units: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.1
    threshold: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): compresses heavy tails (amounts, counts) before standardisation."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


class FraudMLP(nn.Module):
    """MLP on standardised, log-compressed features; outputs a logit per row.

    The normalisation parameters are buffers, so they travel with the weights.
    """

    def __init__(self, n_features: int, hidden_units: list[int], dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden_units:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def fit_normalisation(self, x: torch.Tensor) -> None:
        """Set the normalisation from training inputs (raw feature values)."""
        z = signed_log1p(x)
        self.feature_mean.copy_(z.mean(dim=0))
        self.feature_std.copy_(z.std(dim=0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (signed_log1p(x) - self.feature_mean) / self.feature_std
        return self.net(z).squeeze(-1)


def build_model(config: ModelConfig) -> FraudMLP:
    """A freshly initialised model for `config`."""
    return FraudMLP(len(config.feature_names), list(config.hidden_units), config.dropout)


def save_model(
    model: FraudMLP,
    config: ModelConfig,
    directory: Path,
    reference_stats: dict[str, Any] | None = None,
) -> Path:
    """Save weights (safetensors), config and reference statistics (JSON) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2))
    if reference_stats is not None:
        (directory / REFERENCE_STATS_FILE).write_text(json.dumps(reference_stats))
    return directory


def load_model(directory: Path, device: str = "cpu") -> tuple[FraudMLP, ModelConfig]:
    """Load a model saved by `save_model`, in eval mode.

    Raises:
        FileNotFoundError: When the directory lacks the weights or the config.
        ValueError: When the config or the weights do not describe the same model.
    """
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"model artifact incomplete: {p} is missing")
    try:
        config = ModelConfig(**json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"invalid model config {cfg_path}: {exc}") from exc
    model = build_model(config)
    try:
        model.load_state_dict(load_file(str(w_path), device=device))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot load weights {w_path}: {exc}") from exc
    model.to(device).eval()
    return model, config


def load_reference_stats(directory: Path) -> dict[str, Any] | None:
    """The reference statistics saved with a model, if any."""
    p = directory / REFERENCE_STATS_FILE
    return json.loads(p.read_text()) if p.is_file() else None


@torch.inference_mode()
def predict_proba(model: FraudMLP, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Fraud probabilities for the rows of `x` (float32, model feature order)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device)
        out.append(torch.sigmoid(model(xb)).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)
