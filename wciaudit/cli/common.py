"""What every command shares: the consoles, the error map, the output check, progress bars."""

from __future__ import annotations

import inspect
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
    recorded by its handler (:class:`StopSignals`) while the command runs, because inside
    a C extension the exception can surface as another one (torch turns it into a
    ValueError). A command with a keyword parameter ``stop`` gets that record (a command
    that can keep part of its work asks it in its own ``except BaseException`` and then
    ends with :func:`stopped`); ``stop`` is not a command-line option.
    """
    signature = inspect.signature(func)
    takes_stop = "stop" in signature.parameters

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with StopSignals() as stop:
            if takes_stop:
                kwargs["stop"] = stop
            try:
                return func(*args, **kwargs)
            except typer.Exit:
                raise
            except BaseException as exc:
                if stop.signum is not None:
                    raise fail(*_STOPPED[stop.signum]) from None
                raise _exit_for(exc) from None

    if takes_stop:
        params = [p for p in signature.parameters.values() if p.name != "stop"]
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def stopped(signum: int, what: str) -> typer.Exit:
    """The one line and exit code (130, 143) for a command a signal stopped after it
    wrote ``what`` (a sentence saying which file holds which part of the work)."""
    message, code = _STOPPED[signum]
    return fail(message.replace("no output was written", what), code)


class StopSignals:
    """SIGINT and SIGTERM while a command runs: handlers that record the signal and
    unwind the command (KeyboardInterrupt, :class:`Terminated`), and what they received.

    As a context manager it installs the handlers and puts the previous ones back on
    exit; :meth:`install` alone keeps them (the console entry point, for the whole
    process). Nothing is installed off the main thread, where signals cannot be handled.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    @property
    def signum(self) -> int | None:
        """The signal that is stopping the command, None when none was received."""
        return self.received[0] if self.received else None

    def install(self) -> StopSignals:
        """Put this object's handlers in place, keeping the previous ones for :meth:`restore`."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOPPED}
        return self

    def restore(self) -> None:
        """Put the handlers back that :meth:`install` found."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if signum == signal.SIGTERM:
            # ignore a second SIGTERM while the first one unwinds (cleanup must finish)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise Terminated
        raise KeyboardInterrupt


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
