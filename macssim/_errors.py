"""One family of exceptions, so a caller (the CLI, a notebook) can catch macssim's own
errors apart from bugs. Every message names the thing at fault (file, step, layer,
field) and what was expected."""

__all__ = ["MacssimError", "TraceError", "TopologyError", "PolicyError", "CaptureError",
           "ReportError", "CostError"]


class MacssimError(Exception):
    """Base of every error macssim raises on purpose."""


class TraceError(MacssimError):
    """A trace file, or a request for one, is not what format v1 requires."""


class TopologyError(MacssimError):
    """A topology file or preset is invalid or unknown."""


class PolicyError(MacssimError):
    """A policy was asked for something it cannot do (unknown name, missing input)."""


class CaptureError(MacssimError):
    """Routing could not be captured from a model."""


class ReportError(MacssimError):
    """A report cannot be written where asked without touching files macssim did not
    write."""


class CostError(MacssimError):
    """A cost table is malformed, or a cost was asked for where the table cannot answer
    it (no matching measurements, or a size outside the measured range)."""
