"""The settings of `txt2img serve`, built from its command line and checked.

Pure Python: the server's command line refuses a bad flag before anything loads.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..options import BY_KEY, SERVE_BY_KEY
from ..settings import LoadOptions, folders, load_options


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
    credentials: tuple[tuple[str, str], ...]  # --api-auth: (user, password) pairs
    cors_origins: tuple[str, ...]
    queue_size: int
    max_batch: int
    max_pixels: int
    client_timeout: float  # seconds a --server client may leave its events unread
    models_memory: float | None  # GiB; None: half the device's memory
    model: str
    models_dirs: tuple[Path, ...]
    lora_dirs: tuple[Path, ...]
    embedding_dirs: tuple[Path, ...]
    load: LoadOptions
    allow_pickle: bool
    quiet: bool
    verbose: bool


def build_serve_config(values: dict[str, Any]) -> ServeConfig:
    for key, value in values.items():
        (SERVE_BY_KEY.get(key) or BY_KEY[key]).validate(value)
    credentials = parse_credentials(values["api_auth"])
    host = values["host"].strip()
    if not host:
        raise UsageError("--host is empty", "give an address, e.g. 127.0.0.1")
    if not is_loopback(host) and not credentials:
        raise UsageError(
            f"--host {host} would let anyone on the network draw without a password",
            "add --api-auth USER:PASS, or keep the default --host 127.0.0.1",
        )
    if not values["model"].strip():
        raise UsageError("--model is empty", "give the model to serve")
    return ServeConfig(
        host=host,
        port=values["port"],
        credentials=credentials,
        cors_origins=parse_origins(values["cors_allow_origins"]),
        queue_size=values["queue_size"],
        max_batch=values["max_batch"],
        max_pixels=values["max_pixels"],
        client_timeout=values["client_timeout"],
        models_memory=values["models_memory"],
        model=values["model"],
        models_dirs=folders(values, "models_dir"),
        lora_dirs=folders(values, "lora_dir"),
        embedding_dirs=folders(values, "embeddings_dir"),
        load=load_options(values),
        allow_pickle=values["allow_pickle"],
        quiet=values["quiet"],
        verbose=values["verbose"],
    )


def is_loopback(host: str) -> bool:
    """Only this machine can reach the address (a name other than localhost could
    resolve to anything)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str | None) -> tuple[tuple[str, str], ...]:
    """A1111's --api-auth format, USER:PASS pairs separated by commas; a password may
    hold ':' (the first one ends the user name)."""
    if text is None:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not (sep and user and password):
            raise UsageError(
                "--api-auth must be USER:PASS pairs separated by commas, each with a user "
                "and a password",
                "e.g. --api-auth alice:s3cret,bob:hunter2",
            )
        pairs.append((user, password))
    return tuple(pairs)


def parse_origins(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    origins = tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise UsageError(
                f"--cors-allow-origins {origin!r} is not an origin",
                "give scheme://host[:port], e.g. http://localhost:3000",
            )
    if "*" in origins:
        raise UsageError(
            "--cors-allow-origins '*' would let every web page the user opens drive the server",
            "name the origins of the pages that need it",
        )
    return origins
