"""Adversarial attacks: PGD/FGSM, APGD, FAB, Square, AutoAttack, gradient-masking checks."""
