"""The one exception type that the command line turns into exit status 2."""


class UsageError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""
