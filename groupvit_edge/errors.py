"""Errors a user can cause. The CLI prints their message and exits 2; anything else is a bug and stays a traceback."""


class UserError(Exception):
    """Bad input: the message is one sentence that names the input and how to fix it."""


class ValidationFailed(Exception):
    """A check the user asked for failed (export validation, --max-drop): the CLI exits 1, not 2."""
