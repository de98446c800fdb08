"""The one exception type users see: a message naming the file and the fix."""


class UsamError(Exception):
    """A user-facing error: bad input, missing files, wrong configuration."""


class SampleError(UsamError):
    """One image or mask could not be used; long jobs skip it, count it and go on."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
