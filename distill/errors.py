"""One exception type for user mistakes; the CLI prints its message as one line, no traceback."""


class DistillError(Exception):
    """A user-fixable problem. The message says what is wrong and what to change, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
