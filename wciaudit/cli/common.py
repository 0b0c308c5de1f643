"""What every command shares: the consoles, the error map, the output check, progress bars."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ConfigError, WCIAuditError
from ..formatting import one_line

F = TypeVar("F", bound=Callable[..., Any])

#: stdout for results, stderr for progress and errors
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
#: 128 + the signal's number, as a shell reports a process the signal ended
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM

#: the one line for each signal that ends a command, and its exit code
_STOPPED = {
    signal.SIGINT: ("interrupted; no output was written", EXIT_INTERRUPTED),
    signal.SIGTERM: ("terminated (SIGTERM); no output was written", EXIT_TERMINATED),
}
#: the signals received while the current command runs (see :func:`stop_signal`)
_received: list[int] = []


class Terminated(BaseException):
    """Raised by the SIGTERM handler: unwinds the command like Ctrl-C does, so that every
    ``finally`` and ``except BaseException`` (temporary files) runs. Not an ``Exception``,
    so that library code catching ``Exception`` does not swallow it."""


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    err.print(f"wciaudit: error: {one_line(message)}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """One map from exception types to one-line messages and exit codes.

    WCIAuditError (bad checkpoint, data, setting) -> 2; Ctrl-C -> 130; SIGTERM (what CI
    timeouts send) -> 143; anything else is a bug in wciaudit -> 3, still one line (set
    WCIAUDIT_DEBUG=1 for the traceback). Both signals unwind the command as an exception,
    so temporary files are removed and an output is either whole or absent. A signal is
    recorded by its handler while the command runs, because inside a C extension the
    exception can surface as another one (torch turns it into a ValueError).
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _received
        received = _received = []
        previous = watch_signals(received)
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except BaseException as exc:
            if received:
                message, code = _STOPPED[received[0]]
                raise fail(message, code) from None
            raise _exit_for(exc) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper  # type: ignore[return-value]


def stop_signal() -> int | None:
    """The signal that is stopping the current command, None when none was received.

    A command that can keep part of its work (``scan``: the stages that finished) asks
    this in its own ``except BaseException`` and then ends with :func:`stopped`."""
    return _received[0] if _received else None


def stopped(signum: int, what: str) -> typer.Exit:
    """The one line and exit code (130, 143) for a command a signal stopped after it
    wrote ``what`` (a sentence saying which file holds which part of the work)."""
    message, code = _STOPPED[signum]
    return fail(message.replace("no output was written", what), code)


def watch_signals(record: list[int]) -> dict[int, Any]:
    """Install SIGINT and SIGTERM handlers that append the signal's number to ``record``
    and raise (KeyboardInterrupt, :class:`Terminated`); return the previous handlers
    (none where signals cannot be handled: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: Any) -> None:
        record.append(signum)
        if signum == signal.SIGTERM:
            # ignore a second SIGTERM while the first one unwinds (cleanup must finish)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise Terminated
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, on_signal) for signum in _STOPPED}


def _exit_for(exc: BaseException) -> typer.Exit:
    """The one-line message and exit code for an exception that ended a command."""
    if isinstance(exc, WCIAuditError):
        return fail(str(exc), EXIT_USAGE)
    if isinstance(exc, KeyboardInterrupt):
        return fail(*_STOPPED[signal.SIGINT])
    if isinstance(exc, Terminated):
        return fail(*_STOPPED[signal.SIGTERM])
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in type(exc).__name__:
        return fail("out of memory; try a smaller --batch-size or --hessian-samples", EXIT_USAGE)
    if os.environ.get("WCIAUDIT_DEBUG") or not isinstance(exc, Exception):
        raise exc
    name = type(exc).__name__
    return fail(
        f"internal error ({name}: {exc}); set WCIAUDIT_DEBUG=1 for a traceback", EXIT_INTERNAL
    )


def check_output_folders(*paths: Path | None) -> None:
    """Outputs go only into folders that exist: checked before any work, so that a typo
    in ``--json``/``--html``/``-o`` does not cost a scan (exit 2)."""
    for path in paths:
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"output folder does not exist: {path.parent}")


@contextmanager
def progress_bars(
    enabled: bool, restart_on: str | None = None
) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """Rich progress bars on stderr, one per stage, fed by the library's callback.

    Args:
        enabled: False gives no bars (``--quiet``, or a process other than rank 0).
        restart_on: a stage whose every advance starts the other bars again from zero
            (``track``: each checkpoint's scan runs the same stages).
    """
    if not enabled:
        yield None
        return
    labels = {
        "checkpoints": "Checkpoints",
        "attack-train": "PGD on train",
        "attack-test": "PGD on test",
        "curvature": "Hessian traces",
    }
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
        tasks: dict[str, Any] = {}

        def callback(stage: str, advance: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], advance=advance)
            if stage == restart_on:
                for name, task in tasks.items():
                    if name != restart_on:
                        bar.reset(task)

        yield callback
