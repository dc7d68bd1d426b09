"""The error policy of every command line (`train.py`, `python -m keras_cskd.export`).

A user error is one line on stderr, `error: <Type>: <message>`, and exit code 1;
`--verbose` (where a command has it) shows the traceback instead.
"""

import argparse
import sys

EXIT_ERROR = 1


def one_line(error):
    """`error` as `Type: message` on one line (whitespace collapsed).

    Example:

    >>> one_line(ValueError("bad\\n  value"))
    'ValueError: bad value'
    """
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def report(error):
    """Prints `error` as one line on stderr and returns the exit code.

    Example:

    >>> report(FileNotFoundError("no such config"))  # prints the line on stderr
    1
    """
    print(f"error: {one_line(error)}", file=sys.stderr)
    return EXIT_ERROR


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors follow this policy.

    Example:

    >>> parser = ArgumentParser(prog="python -m keras_cskd.export")
    """

    def error(self, message):
        self.exit(report(argparse.ArgumentError(None, f"{message} (see --help)")))
