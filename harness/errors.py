"""The one exception a user can cause.

Anything a user can get wrong (a config key, a data file, a storage URL) is caught where
it enters and re-raised as a UserError whose message is one sentence naming the file or
key and what to do. The command line prints that sentence, without a traceback, and
exits with status 2.
"""


class UserError(Exception):
    """A mistake in the user's input; the message says what to do about it."""
