"""The one exception type users see for bad input.

The CLI turns a `FlexLoraError` into a single line on stderr and exit status 2.
It subclasses ValueError so library callers can catch it as the usual bad-input error.
"""


class FlexLoraError(ValueError):
    """Bad input: a message that names the file, client or module at fault."""
