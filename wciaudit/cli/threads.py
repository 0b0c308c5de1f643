"""The thread policy as the commands apply it: chosen when a command starts, said in
``--verbose`` and recorded in each result's ``config.thread_policy``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import ScanConfig
from ..threads import ThreadChoice, prepare_threads
from .common import out

if TYPE_CHECKING:
    from ..result import AuditResult


@dataclass(frozen=True)
class AppliedPolicy:
    """The choice a command made, to be written into every result it produces."""

    choice: ThreadChoice

    def record(self, result: AuditResult) -> AuditResult:
        """Put the choice into ``result.config["thread_policy"]``; returns ``result``."""
        result.config["thread_policy"] = self.choice.to_dict()
        return result


def apply_thread_policy(config: ScanConfig, *, verbose: bool) -> tuple[ScanConfig, AppliedPolicy]:
    """The config with the threads the policy chose (``--threads`` when given), the
    OpenMP wait policy as the user set it, and a line saying so when ``verbose``.

    Raises:
        ConfigError: ``--threads`` below 1.
    """
    choice = prepare_threads(config.threads)
    if verbose:
        policy = choice.wait_policy or "unset (OpenMP's default)"
        out.print(
            f"threads: {choice.threads} ({choice.reason}); OMP_WAIT_POLICY {policy}",
            markup=False,
        )
    return config.with_(threads=choice.threads), AppliedPolicy(choice)
