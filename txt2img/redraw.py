"""`--from IMAGE`: the command line's values filled in from what an image records, and the
model and add-ons it names found on disk (`--models-dir`, `--lora-dir`).

Every option given on the command line (or by its environment variable) overrides the
image's value. Pure Python: no torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .addon_folders import SUFFIXES, folder_index
from .errors import ModelError
from .hash_cache import model_hash
from .image_settings import ImageSettings, read_image_settings
from .model_source import HUB_ID
from .prompt_syntax import take_lora_tags


def values_from_image(
    path: Path, prompt: str | None, values: dict[str, Any], given: set[str]
) -> tuple[str | None, dict[str, Any]]:
    """The prompt and option values to draw `path` again with; `given` names the options
    the user set, which keep their values."""
    image = read_image_settings(path)
    values = dict(values)
    for key, value in image.values.items():
        if key in values and key not in given:
            values[key] = value
    if prompt is None and values["prompts_file"] is None:
        prompt = image.values.get("prompt")
    if "model" not in given:
        values["model"] = find_model(image, models_dirs(values))
    _addons_from_image(image, prompt or "", values, given)
    return prompt, values


def models_dirs(values: dict[str, Any]) -> tuple[Path, ...]:
    from .settings import folders

    return folders(values, "models_dir")


def _addons_from_image(
    image: ImageSettings, prompt: str, values: dict[str, Any], given: set[str]
) -> None:
    """txt2img's records name each add-on's file: a VAE, --lora and --embedding files are
    given again, and the folders of the LoRAs the prompt's tags name are searched. An
    A1111 image names them only; its tags are looked up in --lora-dir."""
    tagged = {tag.name for tag in take_lora_tags(prompt)[1]}
    loras, lora_dirs, embeddings = [], [], []
    for addon in image.addons:
        location = addon.get("location")
        if not location:
            continue
        if addon["kind"] == "vae" and "vae" not in given:
            values["vae"] = location
        elif addon["kind"] == "lora" and addon["name"] in tagged:
            lora_dirs.append(str(Path(location).parent))
        elif addon["kind"] == "lora":
            loras.append(f"{location}:{addon['scale']}")
        elif addon["kind"] == "embedding":
            embeddings.append(f"{location}:{addon['token']}")
    if "lora" not in given and loras:
        values["lora"] = loras
    if "embedding" not in given and "embeddings_dir" not in given and embeddings:
        values["embedding"] = embeddings
    if lora_dirs:
        values["lora_dir"] = [*(values["lora_dir"] or ()), *dict.fromkeys(lora_dirs)]


def find_model(image: ImageSettings, dirs: tuple[Path, ...]) -> str:
    """The model the image was drawn with: txt2img's recorded location if it is still
    there (or a Hub id), else a checkpoint in `dirs` with its A1111 `Model hash` (sha256,
    10 hex digits; hashed once and cached), else one with its name."""
    location, name, digest = (image.model.get(k) for k in ("location", "name", "hash"))
    if location and (Path(location).exists() or HUB_ID.fullmatch(location)):
        return location
    candidates = folder_index(dirs, "--models-dir") if dirs else {}
    named = candidates.get(Path(name).stem) if name else None
    if digest:
        for path in ([named] if named else []) + sorted(candidates.values()):
            if path.suffix.lower() in SUFFIXES and model_hash(path) == digest.lower():
                return str(path)
    if named is not None:
        return str(named)
    what = f"{name or 'an unnamed model'}" + (f" (Model hash {digest})" if digest else "")
    where = f" in --models-dir {', '.join(map(str, dirs))}" if dirs else ""
    raise ModelError(
        f"{image.path} was drawn with {what}, which is not found{where}",
        "download it (sites like Civitai find a model by that hash) and pass -m PATH, "
        "or --models-dir with the folder that holds it",
    )
