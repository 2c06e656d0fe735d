"""The fake Hub (tests/fake_hub.py) against the real client, in a child process:
huggingface_hub reads HF_ENDPOINT at import. test_download.py draws through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_hub import FakeHub

# Prepended to every child: time.sleep records instead of waiting; the last stdout line is
# the JSON the child reports.
_PRELUDE = """
import json, sys, time
slept = []
time.sleep = slept.append
"""


def run_child(hub: FakeHub, hf_home: Path, code: str, *args: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + code, *args],
        env={**os.environ, **hub.child_env(hf_home), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def same_files(snapshot: Path, source: Path, names) -> None:
    for name in names:
        assert (snapshot / name).read_bytes() == (source / name).read_bytes(), name


SNAPSHOT = """
from huggingface_hub import snapshot_download
print(json.dumps({"path": snapshot_download(sys.argv[1])}))
"""


def test_snapshot_download_then_offline_from_the_cache(tmp_path):
    source = tmp_path / "repo"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "weights.safetensors").write_bytes(os.urandom(20_000))
    (source / "sub" / "deeper" / "notes.txt").write_text("nested\n")
    (source / "big.dat").write_bytes(os.urandom(1024 * 1024 + 1))  # LFS by size
    names = ["config.json", "sub/weights.safetensors", "sub/deeper/notes.txt", "big.dat"]
    hf_home = tmp_path / "hf"
    with FakeHub() as hub:
        sha = hub.add_repo("acme/small", source)
        online = Path(run_child(hub, hf_home, SNAPSHOT, "acme/small")["path"])
        assert online.name == sha
        same_files(online, source, names)
        assert sorted(
            p.relative_to(online).as_posix() for p in online.rglob("*") if p.is_file()
        ) == sorted(names)
        paths = [(r.method, r.path.split("?")[0]) for r in hub.requests]
        assert ("GET", "/api/models/acme/small/revision/main") in paths
        assert ("GET", f"/api/models/acme/small/tree/{sha}") in paths
        assert all("authorization" not in r.headers for r in hub.requests)

        hub.clear_requests()
        offline = run_child(hub, hf_home, SNAPSHOT, "acme/small", HF_HUB_OFFLINE="1")["path"]
        assert Path(offline) == online
        assert hub.requests == []
