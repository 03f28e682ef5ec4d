"""
The telemetry listener: Prometheus metrics and health endpoints.
"""

from lattice.telemetry._app import TelemetryApp
from lattice.telemetry._metrics import new_registry
from lattice.telemetry.service import TelemetryService

__all__ = ["TelemetryApp", "TelemetryService", "new_registry"]
