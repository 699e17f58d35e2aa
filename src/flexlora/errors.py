"""The exception types of flexlora: bad input (FlexLoraError) and its own bugs (InternalError).

The CLI turns a `FlexLoraError` into a single line on stderr and exit status 2.
It subclasses ValueError so library callers can catch it as the usual bad-input error.
"""


class FlexLoraError(ValueError):
    """Bad input: a message that names the file, client or module at fault.

    The message is one line whatever it quotes: a line break in a quoted key, path or
    value (a YAML key may hold one) is written as `\\n`, so the CLI's one line stays one.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        if isinstance(message, str):
            message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message, *args)


class InternalError(RuntimeError):
    """A broken invariant of flexlora itself (an engine bug), never the user's input.

    Deliberately not a FlexLoraError (nor a ValueError): the CLI shows it with its
    traceback and exit status 1 as a bug to report, instead of one line that would
    send the user hunting for a mistake in their config.
    """
