"""`--from IMAGE`: the command line's values filled in from what an image records, and the
model and add-ons it names found on disk (`--models-dir`, `--lora-dir`).

Every option given on the command line overrides the image's value (an environment
variable such as TXT2IMG_MODEL does not: it is a default, and the image says more).
Pure Python: no torch here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError, say
from ..model.folders import SUFFIXES, folder_index
from ..model.hashes import file_sha256, lora_hash, model_hash
from ..model.source import DEMO_MODEL, HUB_ID, in_hub_cache
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
    if image.unsupported:
        keys = ", ".join(image.unsupported)
        if not values.get("ignore_unsupported"):
            raise UsageError(
                f"{path} was drawn with {keys}, which txt2img does not draw: it would be "
                "another picture",
                "pass --ignore-unsupported to draw it without them",
            )
        say(f"txt2img: warning: {path} is drawn without its {keys}")
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
        return prompt, values, FromImage(hashes, model_names=names)
    if "model" not in given:
        values["model"] = find_model(image, folders(values, "models_dir"))
    tag_files = _addons_from_image(image, values, given)
    taken = [values["model"]] if "model" not in given else []
    taken += [values.get("vae")] if "vae" not in given else []
    taken += [entry.rpartition(":")[0] for key in ("lora", "embedding") if key not in given
              for entry in values.get(key) or ()]  # fmt: skip
    if any(isinstance(v, str) and HUB_ID.fullmatch(v) and not Path(v).exists() for v in taken):
        values["offline"] = True  # a Hub id only the image names: read from the cache only
    return prompt, values, FromImage(hashes, lora_files=tag_files)


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


def _addons_from_image(
    image: ImageSettings, values: dict[str, Any], given: set[str]
) -> dict[str, Path]:
    """The add-ons the image records, each used as `_recorded` allows or found in the
    user's folders, else refused (drawing without one would be another picture in
    silence). An option the user gives replaces the image's add-ons of its kind. The
    LoRAs the prompt's tags name are found in --lora-dir at run time; without one, their
    recorded files are used where `_recorded` allows: returned by tag name."""
    tagged = {tag.name for tag in take_lora_tags(str(image.values.get("prompt", "")))[1]}
    lora_dirs, embedding_dirs = folders(values, "lora_dir"), folders(values, "embeddings_dir")
    loras, embeddings, tag_files = [], [], {}
    untagged = any(a["kind"] == "lora" and a.get("name") not in tagged for a in image.addons)
    lora_index = folder_index(lora_dirs, "--lora-dir") if untagged and "lora" not in given else {}
    for addon in image.addons:
        kind, name, digest = addon["kind"], addon.get("name"), addon.get("hash")
        if kind == "vae" and "vae" not in given:
            values["vae"] = _addon(image, addon, folders(values, "models_dir"), "--vae")
        elif kind == "lora" and name in tagged:
            use = None if lora_dirs else _recorded(addon.get("location"), digest, lora_hash, ())
            if use is not None:
                say(f"txt2img: --from: the LoRA of <lora:{name}>: {use[0]} ({use[1]})")
                tag_files[str(name)] = Path(use[0])
        elif kind == "lora" and "lora" not in given:
            loras.append(f"{_addon(image, addon, lora_dirs, '--lora', lora_index)}:"
                         f"{addon.get('scale', 1.0)}")  # fmt: skip
        elif (
            kind == "embedding"
            and isinstance(addon.get("token"), str)
            and not ({"embedding", "embeddings_dir"} & given)
        ):
            found = _addon(image, addon, embedding_dirs, "--embedding")
            embeddings.append(f"{found}:{addon['token']}")
    if loras:
        values["lora"] = loras
    if embeddings:
        values["embedding"] = embeddings
    return tag_files


_HASHERS: dict[str, Callable[[Path], str]] = {
    "--vae": lambda path: file_sha256(path)[:10],
    "--lora": lora_hash,
    "--embedding": lambda path: file_sha256(path)[:12],
}


def _addon(
    image: ImageSettings,
    addon: dict[str, Any],
    dirs: tuple[Path, ...],
    flag: str,
    index: dict[str, Path] | None = None,
) -> str:
    """The file to load for an add-on the image records: its recorded location where
    `_recorded` allows, else (given an `index` of the user's folders) the file with its
    name, or its hash; else refused."""
    name, digest, location = addon.get("name"), addon.get("hash"), addon.get("location")
    hash_of = _HASHERS[flag]
    what = f"the {'VAE' if addon['kind'] == 'vae' else addon['kind']} {name}"
    use = _recorded(location, digest, hash_of, dirs)
    if use is None and index:
        by_name = index.get(str(name))
        if by_name is not None:
            use = str(by_name), f"found in {flag}-dir by its name"
        elif isinstance(digest, str):
            by_hash = next((p for p in sorted(index.values()) if _hash(hash_of, p) == digest), None)
            use = (str(by_hash), f"found in {flag}-dir by its hash") if by_hash else None
    if use is None:
        recorded = f" ({location})" if isinstance(location, str) else ""
        raise ModelError(
            f"{image.path} was drawn with {what}{recorded}, which is not used: {_UNTRUSTED}",
            f"pass {flag} with the file if you trust it",
        )
    say(f"txt2img: --from: {what}: {use[0]} ({use[1]})")
    return use[0]


# Why a location an image records may not be used: an image is anyone's file.
_UNTRUSTED = (
    "a file an image names is used only when its hash matches the image's record or it lies "
    "in a folder you gave, and nothing an image names is downloaded"
)


def _recorded(
    location: Any, digest: Any, hash_of: Callable[[Path], str], dirs: tuple[Path, ...]
) -> tuple[str, str] | None:
    """A location an image records, and why it may be used; None if it may not. An
    image is untrusted input: a recorded file is used only when its hash matches the
    image's record, or it lies in a folder the user gave (or is the shipped demo model);
    a Hub id only when it is in the Hugging Face cache already (nothing is downloaded
    because an image names it)."""
    if not isinstance(location, str) or not location:
        return None
    path = Path(location)
    if HUB_ID.fullmatch(location) and not path.exists():
        cached = in_hub_cache(location)
        return (location, "a Hub id already in the Hugging Face cache") if cached else None
    if not path.is_absolute() or not path.exists():
        return None
    resolved = path.resolve()
    if resolved == DEMO_MODEL.resolve():
        return location, "the demo model shipped with txt2img"
    for folder in dirs:  # (or a link in it leads there)
        if resolved.is_relative_to(folder.resolve()) or (folder / path.name).resolve() == resolved:
            return location, f"it lies in {folder}"
    # Only a weights file is hashed: an image must not make txt2img read ~/.ssh/id_rsa.
    weights = path.suffix.lower() in SUFFIXES and not resolved.is_relative_to(Path("/dev"))
    if weights and isinstance(digest, str) and _hash(hash_of, path) == digest.lower():
        return location, "its hash matches the image's record"
    return None


def _hash(hash_of: Callable[[Path], str], path: Path) -> str | None:
    try:
        return hash_of(path)
    except OSError:  # not a regular file, unreadable, or gone
        return None


def find_model(image: ImageSettings, dirs: tuple[Path, ...]) -> str:
    """The model the image was drawn with: txt2img's recorded location where `_recorded`
    allows, else a checkpoint in `dirs` with its A1111 `Model hash` (sha256, 10 hex
    digits; hashed once and cached), else one with its name. Said on stderr."""
    location, name, digest = (image.model.get(k) for k in ("location", "name", "hash"))
    use = _recorded(location, digest, model_hash, dirs)
    candidates = folder_index(dirs, "--models-dir") if dirs and use is None else {}
    named = _by_name(candidates, name)
    if use is None and isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{10}", digest):
        for path in ([named] if named else []) + sorted(candidates.values()):
            if _hash(model_hash, path) == digest.lower():
                use = str(path), "found in --models-dir by its Model hash"
                break
    if use is None and named is not None:
        use = str(named), "found in --models-dir by its name"
    if use is not None:
        say(f"txt2img: --from: model {use[0]} ({use[1]})")
        return use[0]
    where = f" in --models-dir {', '.join(map(str, dirs))}" if dirs else ""
    if isinstance(location, str) and location:
        raise ModelError(
            f"{image.path} was drawn with {location}, which is not used, nor found{where}: "
            + _UNTRUSTED,
            f"pass -m {location} if you trust it, or --models-dir with the folder that holds it",
        )
    what = f"{name or 'an unnamed model'}" + (f" (Model hash {digest})" if digest else "")
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
