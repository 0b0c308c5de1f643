"""Architecture references: what the user passes (``--arch``) or the metadata names."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ._text import is_identifier, one_line
from .record import ArchSpec, CheckpointRecord
from .torchvision_model import check_name, is_torchvision_name

_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_arch(spec: str, *, user: bool) -> ArchSpec:
    """``timm_name`` | ``torchvision:name`` | ``file.py`` | ``file.py:Class`` |
    ``package.module:Class``.

    Raises:
        ConfigError: (``user=True``) or CheckpointError: the reference is malformed;
            CheckpointError: it names nothing timm or Python can provide.
    """
    error = ConfigError if user else CheckpointError
    if not isinstance(spec, str) or not spec.strip():
        raise error("the architecture must be a timm model name or models.py:ClassName")
    spec = spec.strip()
    if is_torchvision_name(spec):
        return ArchSpec("torchvision", check_name(spec))
    # no timm model name ends in .py or holds a colon: those need no timm (~2 s to import)
    if not spec.endswith(".py") and ":" not in spec:
        import timm

        if timm.is_model(spec):
            return ArchSpec("timm", spec)
    if spec.endswith(".py"):
        return ArchSpec("file", spec)
    if ":" in spec:
        target, class_name = spec.rsplit(":", 1)
        if not is_identifier(class_name):
            raise error(
                one_line(
                    f"architecture {spec!r}: {class_name!r} is not a Python class name; "
                    "use models.py:ClassName or package.module:ClassName"
                )
            )
        if target.endswith(".py"):
            return ArchSpec("file", target, class_name)
        if _DOTTED_NAME.match(target):
            return ArchSpec("module", target, class_name)
        raise error(
            one_line(
                f"architecture {spec!r}: {target!r} is neither a .py file nor a module name; "
                "use models.py:ClassName or package.module:ClassName"
            )
        )
    raise CheckpointError(
        one_line(
            f"unknown architecture {spec!r}: not a timm model name (see timm.list_models()); "
            "for your own model pass --arch models.py:ClassName or package.module:ClassName"
        )
    )


def arch_from_metadata(record: CheckpointRecord, path: Path) -> ArchSpec:
    """The timm architecture the metadata names; anything else needs ``--arch``."""
    import timm

    name = record.arch
    if name is None:
        if record.format == "pytorch":
            raise CheckpointError(
                f"{path} is a PyTorch state_dict, which does not record its architecture; "
                "pass --arch with a timm model name or models.py:ClassName"
            )
        raise CheckpointError(
            f"{path} does not name its architecture (metadata key 'arch'); pass --arch with a "
            "timm model name or models.py:ClassName"
        )
    if timm.is_model(name):
        return ArchSpec("timm", name)
    if is_torchvision_name(name):  # a registered builder, called with weights=None: no code
        return ArchSpec("torchvision", check_name(name))
    raise CheckpointError(
        one_line(
            f"{path} names architecture {name!r}, which is not a timm model; pass "
            "--arch models.py:ClassName (the file that defines it) or a timm model name"
        )
    )


def same_arch(spec: ArchSpec, record: CheckpointRecord) -> bool:
    """Whether the user's architecture is the one the checkpoint's metadata names."""
    if record.arch is None:
        return True
    if spec.kind == "timm":
        return spec.target == record.arch
    if spec.kind == "torchvision":
        return f"torchvision:{spec.target}" == record.arch
    return spec.class_name is None or spec.class_name == record.arch.rsplit(":", 1)[-1]


def class_name_from_metadata(record: CheckpointRecord, target: str) -> str:
    """The class part of the metadata's ``arch`` ("models.py:Net" -> "Net"); the module
    part is never imported."""
    name = record.arch
    if name is None:
        raise CheckpointError(
            f"the checkpoint does not name a class (metadata key 'arch'); pass --arch {target}:ClassName"
        )
    candidate = name.rsplit(":", 1)[-1]
    if not is_identifier(candidate):
        raise CheckpointError(
            one_line(
                f"metadata key 'arch' ({name[:80]!r}) is not a Python class name; "
                f"pass --arch {target}:ClassName"
            )
        )
    return candidate
