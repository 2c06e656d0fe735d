"""What `--model` names: a local diffusers folder or a Hugging Face Hub id.

Decided from the string and the file system alone, with no download and no torch, so a
mistyped path fails at once and never reaches the Hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PATH_PREFIXES = ("/", "./", "../", "~", "\\")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    location: str  # absolute folder path, or the Hub id
    is_local: bool

    @property
    def name(self) -> str:
        """The short name A1111 shows as `Model:`: the folder name, or the Hub id."""
        return Path(self.location).name if self.is_local else self.location


def locate(model: str) -> ModelSource:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is not a diffusers model folder (it has no model_index.json)",
                "point --model at the folder that holds model_index.json",
            )
        return ModelSource(str(path.resolve()), is_local=True)
    if path.is_file() or model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(
            f"{model} is a single-file checkpoint, which this version cannot load",
            "use a diffusers-format folder or a Hub id",
        )
    if model.startswith(PATH_PREFIXES) or not HUB_ID.fullmatch(model):
        raise ModelError(
            f"model {model!r} is neither an existing folder nor a Hub id like owner/name",
            "check the path, or give a Hugging Face Hub id",
        )
    return ModelSource(model, is_local=False)
