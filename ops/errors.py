"""The one exception type for bad input from the user."""


class UsageError(ValueError):
    """Bad input (a catalog, a file, a DB, a predicate, an option): the message names what was wrong
    and what to do. The CLI prints it without a traceback and exits with status 2."""
