"""gradscope: measure how weight-gradient distributions narrow under iterative pruning,
and turn that narrowing into SILO learning-rate schedules."""

__version__ = "0.1.0"


class GradscopeError(Exception):
    """An error with a message meant for the user (bad input, missing files, bad flags).

    The CLI prints these as one line and exits with status 2, never a traceback.
    """


class InternalError(AssertionError):
    """A broken internal invariant (a gradscope bug, not bad input): never shown as a user error.

    The CLI lets it through as a traceback so that it gets reported, unlike ``GradscopeError``.
    """
