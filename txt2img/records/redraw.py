"""`--from IMAGE`: the command line's values filled in from what an image records, and the
model and add-ons it names found on disk (`--models-dir`, `--lora-dir`).

Every option given on the command line overrides the image's value (an environment
variable such as TXT2IMG_MODEL does not: it is a default, and the image says more).
Pure Python: no torch here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError, say
from ..model.folders import SUFFIXES, folder_index
from ..model.hashes import model_hash
from ..model.source import HUB_ID
from ..options import BY_KEY
from ..prompt.syntax import take_lora_tags
from ..settings import FromImage, folders
from .read import ImageSettings, read_image_settings


def values_from_image(
    path: Path, prompt: str | None, values: dict[str, Any], given: set[str], remote: bool = False
) -> tuple[str | None, dict[str, Any], FromImage]:
    """The prompt and option values to draw `path` again with (`given` names the options
    the user set, which keep their values), and the hashes it records to find renamed
    files by. `remote` (--server): the server finds the model by the image's Model hash,
    then its name, and its LoRA tags by name, then hash, as a local run does; files the
    image names cannot be sent, so such an image is refused."""
    image = read_image_settings(path)
    for note in image.notes:
        say(f"txt2img: {note}")
    values = dict(values)
    for key, problem in image.problems.items():
        if key not in given and not (key == "prompt" and prompt is not None):
            raise UsageError(problem.message, f"give {BY_KEY[key].flag} to draw anyway"
                             if key in BY_KEY else "give the prompt")  # fmt: skip
    for key, value in image.values.items():
        if key in values and key not in given:
            _check_recorded(image, key, value)
            values[key] = value
    if prompt is None and values["prompts_file"] is None:
        prompt = image.values.get("prompt")
    hashes = {a["name"]: a["hash"] for a in image.addons
              if a["kind"] == "lora" and isinstance(a.get("hash"), str)}  # fmt: skip
    if remote:
        names = _remote_model(image, values, given)
        return prompt, values, FromImage(hashes, names)
    if "model" not in given:
        values["model"] = find_model(image, folders(values, "models_dir"))
    _addons_from_image(image, values, given)
    return prompt, values, FromImage(hashes)


def _remote_model(image: ImageSettings, values: dict[str, Any], given: set[str]) -> tuple[str, ...]:
    """The names the server is asked for, in order; the image's add-ons checked."""
    names: tuple[str, ...] = ()
    if "model" not in given:
        recorded = (image.model.get("hash"), image.model.get("name"))
        names = tuple(dict.fromkeys(name for name in recorded if isinstance(name, str) and name))
        values["model"] = names[0] if names else values["model"]
    # The server finds a prompt's LoRA tags and embedding words in its own folders; a
    # VAE or a LoRA loaded by --lora cannot be named to it.
    tagged = {tag.name for tag in take_lora_tags(str(image.values.get("prompt", "")))[1]}
    for addon in image.addons:
        if addon["kind"] == "vae" or (addon["kind"] == "lora" and addon["name"] not in tagged):
            raise UsageError(
                f"{image.path} was drawn with the {addon['kind'].upper()} {addon['name']!r}, "
                "which a server cannot be told to load",
                "draw it here: --server ''",
            )
    return names


def _check_recorded(image: ImageSettings, key: str, value: Any) -> None:
    try:
        BY_KEY[key].validate(value)
    except UsageError as exc:
        raise UsageError(
            f"{image.path} records a setting txt2img cannot use: {exc.message}",
            f"give {BY_KEY[key].flag} to draw anyway",
        ) from None


def _addons_from_image(image: ImageSettings, values: dict[str, Any], given: set[str]) -> None:
    """txt2img's records name each add-on's file: its VAE, --lora and --embedding files
    are given again, and the folders of the LoRAs its prompt's tags named are searched
    where the user names no --lora-dir (TXT2IMG_LORA_DIR included). An A1111 image names
    add-ons only; its tags are looked up in --lora-dir."""
    tagged = {tag.name for tag in take_lora_tags(str(image.values.get("prompt", "")))[1]}
    loras, lora_dirs, embeddings = [], [], []
    for addon in image.addons:
        location = addon.get("location")
        if not isinstance(location, str) or not location:
            continue
        if addon["kind"] == "vae" and "vae" not in given:
            values["vae"] = location
        elif addon["kind"] == "lora" and addon["name"] in tagged:
            lora_dirs.append(str(Path(location).parent))
        elif addon["kind"] == "lora":
            loras.append(f"{location}:{addon.get('scale', 1.0)}")
        elif addon["kind"] == "embedding" and isinstance(addon.get("token"), str):
            embeddings.append(f"{location}:{addon['token']}")
    if "lora" not in given and loras:
        values["lora"] = loras
    if "embedding" not in given and "embeddings_dir" not in given and embeddings:
        values["embedding"] = embeddings
    lora_dirs = [folder for folder in dict.fromkeys(lora_dirs) if Path(folder).is_dir()]
    if lora_dirs and not folders(values, "lora_dir"):
        values["lora_dir"] = lora_dirs


def find_model(image: ImageSettings, dirs: tuple[Path, ...]) -> str:
    """The model the image was drawn with: txt2img's recorded location if it is still
    there (or a Hub id), else a checkpoint in `dirs` with its A1111 `Model hash` (sha256,
    10 hex digits; hashed once and cached), else one with its name."""
    location, name, digest = (image.model.get(k) for k in ("location", "name", "hash"))
    if location and (Path(location).exists() or HUB_ID.fullmatch(location)):
        return location
    candidates = folder_index(dirs, "--models-dir") if dirs else {}
    named = _by_name(candidates, name)
    if digest and re.fullmatch(r"[0-9a-fA-F]{10}", digest):
        for path in ([named] if named else []) + sorted(candidates.values()):
            if _hash_or_none(path) == digest.lower():
                return str(path)
    if named is not None:
        return str(named)
    what = f"{name or 'an unnamed model'}" + (f" (Model hash {digest})" if digest else "")
    where = f" in --models-dir {', '.join(map(str, dirs))}" if dirs else ""
    find = "sites like Civitai find a model by that hash; " if digest else ""
    raise ModelError(
        f"{image.path} was drawn with {what}, which is not found{where}",
        f"{find}pass -m PATH, or --models-dir with the folder that holds it",
    )


def _by_name(candidates: dict[str, Path], name: str | None) -> Path | None:
    """A1111's `Model:` is the file's stem (`sd_xl_base_1.0`); a name with an extension
    is looked up by its stem."""
    if not name:
        return None
    if name in candidates:
        return candidates[name]
    path = Path(name)
    return candidates.get(path.stem) if path.suffix.lower() in SUFFIXES else None


def _hash_or_none(path: Path) -> str | None:
    try:
        return model_hash(path)
    except OSError:  # a dangling link or an unreadable file in the folder
        return None
