"""Checkpoint formats -> bare ``nn.Module`` + provenance (SPEC: "The model under audit").

These forms are read, and none of them can make wciaudit run code from the checkpoint:

- ``"safetensors"``: a ``.safetensors`` state_dict; the architecture comes from the
  ``arch`` argument or the file's metadata (key ``arch``, plus ``arch_args``,
  ``num_classes``, ``mean``, ``std``, ``input_size``, ``dataset``, and the threat
  model ``eps`` / ``norm``).
- ``"timm-folder"``: a folder with ``config.json`` and ``model.safetensors`` (or
  ``pytorch_model.bin``), as timm's ``save_for_hf`` writes it.
- ``"transformers-folder"``: a Hugging Face ``save_pretrained`` folder (``config.json``
  naming ``architectures``), built and loaded by transformers offline, never with remote
  code (:mod:`.transformers_model`).
- ``"pytorch"``: a ``.pt``/``.pth``/``.bin`` state_dict (bare, or under ``state_dict``
  or ``model``), read only with ``torch.load(..., weights_only=True)``; ``"lightning"``:
  the same for a Lightning ``.ckpt``, whose LightningModule attribute prefix is stripped
  when the keys under it fit the architecture (:mod:`.prefix`).
- a torchvision builder, ``arch="torchvision:resnet18"`` (:mod:`.torchvision_model`).
- a custom architecture, ``arch="models.py:ClassName"`` or ``"package.module:ClassName"``,
  for any of the weight files above. Only a file or module the *user* names is
  imported; a name found in checkpoint metadata is at most looked up as a class
  inside that user-named module, never imported.

Weights are loaded strictly (every key, every shape), must be finite, and are cast to
float32. Every failure is a :class:`~wciaudit.errors.CheckpointError` (or a
:class:`~wciaudit.errors.ConfigError` for a malformed option) with a one-line message.

Example:
    >>> import timm, safetensors.torch, tempfile, os, torch
    >>> net = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
    >>> safetensors.torch.save_file(net.state_dict(), path, metadata={"arch": "test_resnet"})
    >>> loaded = load_checkpoint(path)
    >>> loaded.info.arch, loaded.info.num_classes, loaded.data_config["input_size"][0]
    ('test_resnet', 10, 1)

One module per concern, data flowing one way:

- :mod:`.readers`: file -> :class:`~.record.CheckpointRecord` (what it says, sha256 once)
  + its tensors; also :func:`read_epoch`, :func:`file_sha256`.
- :mod:`.arch`, :mod:`.user_code`, :mod:`.build`: architecture reference -> untrained model
  (a user's ``models.py`` is imported once per file).
- :mod:`.strict`: strict, finite, float32 loading; :mod:`.prefix`: a training wrapper's
  attribute prefix.
- :mod:`.precedence`: the one rule flag > metadata > timm config > default.
- :mod:`.data_config`: input size, mean/std, interpolation, with their sources.
- :mod:`.loader`: :func:`load_checkpoint`, which ties them together.
"""

from __future__ import annotations

from .loader import LoadedCheckpoint, load_checkpoint, loaded_from_module
from .memory import MAX_CHECKPOINT_BYTES, available_memory
from .precedence import Resolved, resolve
from .readers import (
    CHECKPOINT_SUFFIXES,
    PYTORCH_SUFFIXES,
    SAFETENSORS_SUFFIX,
    file_sha256,
    read_checkpoint,
    read_epoch,
)
from .record import ArchSpec, CheckpointRecord

__all__ = [
    "LoadedCheckpoint",
    "load_checkpoint",
    "loaded_from_module",
    "CheckpointRecord",
    "ArchSpec",
    "read_checkpoint",
    "read_epoch",
    "file_sha256",
    "resolve",
    "Resolved",
    "available_memory",
    "MAX_CHECKPOINT_BYTES",
    "CHECKPOINT_SUFFIXES",
    "PYTORCH_SUFFIXES",
    "SAFETENSORS_SUFFIX",
]
