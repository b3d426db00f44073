"""The one exception type users see.

Raise `AttnGANError` with a one-line message that says what is wrong and how to fix it.
The CLI prints it as one line and exits non-zero; the service maps it to a 4xx JSON error.
"""


class AttnGANError(Exception):
    """A problem with the user's input, files or configuration (not a bug in our code)."""
