"""The one class of user mistakes. Every module raises a subclass of `UserError` where a bad value enters (a file, a
folder, a config field, a flag), with a message that names it and its value; the CLI prints that message on one line
and exits with status 2. Any other exception is a bug and keeps its traceback."""


class UserError(ValueError):
    """Something the user gave is unusable; the message names it (the file, field or flag) and what is wrong."""
