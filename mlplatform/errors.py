"""Typed errors of the platform: each says what was wrong and how to fix it."""


class MlPlatformError(Exception):
    """Base class of the platform's own errors."""


class ConfigError(MlPlatformError):
    """A setting, parameter or configuration file is invalid."""


class DataValidationError(MlPlatformError):
    """The data broke a validation rule; the message names the column and the rule."""

    def __init__(self, violations: list[str]) -> None:
        self.violations = violations
        super().__init__("data validation failed:\n  - " + "\n  - ".join(violations))


class PromotionRejected(MlPlatformError):
    """A trained model did not pass the promotion gate and was not registered."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("model rejected by the promotion gate:\n  - " + "\n  - ".join(reasons))


class RegistryAccessDenied(MlPlatformError):
    """The MLflow tracking server refused a request: not authenticated (HTTP 401) or not permitted (HTTP 403).

    The message names the user, what was refused and how to fix it (docs/adr/0017-registry-access-control.md).
    """

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)
