"""User errors as one ``error:`` line: the wrapper every stage script runs its ``main`` through.

A user error (a bad sheet, image, params key or path) is an exception the library raises on purpose with
a message that names the file / row / value and the fix: ``ValueError`` (and its subclasses) or ``OSError``
(``FileNotFoundError``, ``PermissionError``, ``ConnectionError``...). Those end the stage with that message on
one line and exit status :data:`EXIT_USER_ERROR`; the traceback is for developers and printed only with
``-v``/``--verbose`` or ``ASSUREXRAY_DEBUG=1``. Anything else is a bug and keeps Python's traceback (exit 1).
Third-party warnings (pydicom, PIL, torch) become one log line each instead of a source-line dump.

    if __name__ == "__main__":
        raise SystemExit(run_stage(main))
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

__all__ = [
    "DEBUG_ENV",
    "EXIT_USER_ERROR",
    "EXIT_INTERRUPTED",
    "USER_ERRORS",
    "debug_requested",
    "error_line",
    "warnings_as_log_lines",
    "run_stage",
]

#: ``ASSUREXRAY_DEBUG=1`` prints tracebacks of user errors too (as ``-v`` does).
DEBUG_ENV = "ASSUREXRAY_DEBUG"
#: Exit status of a stage stopped by a user error (argparse uses 2 for bad arguments as well).
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
#: Exception types the library raises for bad input, always with a message naming what and where.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
_VERBOSE_FLAGS = ("-v", "--verbose")
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_warnings_logger = logging.getLogger("assurexray.warnings")


def debug_requested(argv: Sequence[str] = (), environ: dict[str, str] | None = None) -> bool:
    """True when ``-v``/``--verbose`` is among ``argv`` or ``ASSUREXRAY_DEBUG`` is set to a true value."""
    environ = os.environ if environ is None else environ
    flag = environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or any(arg in _VERBOSE_FLAGS for arg in argv)


def error_line(prog: str, err: BaseException) -> str:
    """``<prog>: error: <message>``, the message being the exception's own (its type when it has none)."""
    if isinstance(err, OSError) and err.strerror and err.filename:  # raised by the OS: "<path>: <reason>"
        message = f"{err.filename}: {err.strerror}"
    else:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    message = " ".join(message.split()) or type(err).__name__  # one line, whatever the library wrote
    return f"{prog}: error: {message}"


def run_stage(
    main: Callable[[list[str] | None], int],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run a stage's ``main(argv)``; turn user errors into one ``error:`` line and exit status 2.

    ``argv`` defaults to ``sys.argv[1:]``; ``-v``/``--verbose`` are taken out of it (stages need not declare
    them) and switch on DEBUG logging and tracebacks. Logging is configured here, once, for every stage.
    """
    stderr = sys.stderr if stderr is None else stderr
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a not in _VERBOSE_FLAGS]
    prog = prog or Path(sys.argv[0]).stem or "stage"
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=_LOG_FORMAT, stream=stderr)
    with warnings_as_log_lines(enabled=not debug):
        try:
            return int(main(args) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: error: interrupted; outputs are written atomically, so earlier outputs are intact.",
                  file=stderr)
            return EXIT_INTERRUPTED
        except USER_ERRORS as err:
            if debug:
                traceback.print_exc(file=stderr)
            print(error_line(prog, err), file=stderr)
            return EXIT_USER_ERROR


@contextlib.contextmanager
def warnings_as_log_lines(*, enabled: bool = True) -> Iterator[None]:
    """Within the block, each warning (pydicom, PIL, torch...) is one WARNING log line, not a source dump."""
    with warnings.catch_warnings():
        if enabled:
            warnings.showwarning = _log_warning
        yield


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (stdlib)
    """``warnings.showwarning`` replacement: one log line naming the warning and where it came from."""
    module = Path(str(filename)).stem
    text = " ".join(str(message).split())
    _warnings_logger.warning("%s (%s:%d): %s", category.__name__, module, lineno, text)
