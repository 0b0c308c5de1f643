"""Adversarial attacks: PGD/FGSM, APGD, FAB, Square, AutoAttack, gradient-masking checks.

- :mod:`.pgd`: PGD-K with random start and FGSM (the scan's default, SPEC: Attack);
- :mod:`.apgd`: APGD-CE and APGD-T (Croce & Hein 2020), original settings;
- :mod:`.fab`: FAB-T (Croce & Hein 2020), :mod:`.square`: Square (Andriushchenko et al. 2020);
- :mod:`.autoattack`: the standard AutoAttack composition and :func:`run_attack`, which
  gives robust accuracy from the chosen attack and the robust-loss points from the
  loss-maximising one;
- :mod:`.masking`: gradient-masking checks;
- :mod:`.seeding`: per-example random streams keyed by the global example index;
- :mod:`.threat`: the threat model's checks, per-example sizes and directions, projection.
"""

from .autoattack import ATTACKS, AttackOutcome, run_attack
from .masking import MaskingReport, masking_checks
from .pgd import attack_split, perturb

__all__ = [
    "ATTACKS",
    "AttackOutcome",
    "MaskingReport",
    "attack_split",
    "masking_checks",
    "perturb",
    "run_attack",
]
