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


class JobsPending(Exception):
    """Not an error: work that must run elsewhere first (e.g. Oracle candidates printed for a
    cluster scheduler). The CLI prints the message to stdout and exits 0."""
