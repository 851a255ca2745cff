"""Every exception pplscale raises on purpose, in one place.

Messages say what was wrong, where (program, site, particle) and what to do.
"""


class PPLError(Exception):
    """Base class of all pplscale errors."""


class ProgramError(PPLError):
    """A reasoning program is malformed (bad site, missing answer, ...)."""


class DuplicateSiteError(ProgramError):
    """Two sites of one execution share a name."""


class MissingAnswerError(ProgramError):
    """A program returned without calling ``ppl.answer``."""


class ReplayDivergenceError(ProgramError):
    """Re-executing a program took a different path for the same recorded values.

    Programs must be deterministic given the values of their random sites: all
    randomness has to go through ``ppl.step`` / ``ppl.sample``.
    """


class InvalidArgumentError(PPLError, ValueError):
    """An argument to a primitive, engine or backend is out of range."""


class EmptyPosteriorError(PPLError):
    """Every particle has weight zero: no answer can be reported."""


class BackendError(PPLError):
    """A language-model backend failed or returned something malformed."""


class ModelNotInstalledError(BackendError):
    """The embedded model's package is not installed."""


class SerializationError(PPLError):
    """A value in a posterior cannot be written to or read from JSON."""


class ParticleError(ProgramError):
    """A reasoning program raised inside a particle.

    ``sites`` is that particle's trace up to the failure, so the message can
    show what the program had done.
    """

    def __init__(self, message: str, sites: tuple = ()):
        super().__init__(message)
        self.sites = tuple(sites)


class RecipeError(PPLError):
    """A run target, recipe file or run option is invalid."""


class ReportError(PPLError):
    """A saved run cannot be read, or its files cannot be written."""


class VerifierError(PPLError):
    """A verifier or reward model is misconfigured or returned an invalid score."""


class TaskFormatError(PPLError):
    """A task file (JSONL, BIG-bench ``task.json``) is missing or malformed."""


class ServerUnavailable(BackendError):
    """A model server could not be reached, kept failing or timed out after all retries."""


class ServerUnreachable(ServerUnavailable):
    """A model server refused or dropped the connection on a request's last try."""


class BadResponse(BackendError):
    """A model server answered with something that is not a valid response to the request."""


class CapabilityError(BackendError):
    """A backend cannot do what was asked exactly (e.g. a logits processor over HTTP)."""


class CalibrationError(PPLError):
    """Calibration data, a calibration file or its use is invalid (see ``inference.conformal``)."""


class FitDiagnosticsError(PPLError):
    """A NUTS fit whose diagnostics (R-hat, divergences, ESS) say it cannot be trusted."""
