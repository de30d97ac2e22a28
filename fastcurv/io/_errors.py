"""The error that every data reader raises for a file it cannot use."""


class DataError(ValueError):
    """A data file that cannot be read as asked; the message says where and why."""
