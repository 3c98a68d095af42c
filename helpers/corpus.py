"""The recorded corpus: the manifest, and hash-checked reads of its files.

``pcaps/manifest.json`` lists one entry per recording: experiment, chapter, parameters,
the pcap and the measurements file (path, sha256, size), kernel release, the relevant
sysctls, tool versions, date, and the invariant the recording shows, and the
machine snapshot (:class:`helpers.rules.Machine`) it was recorded on. Replay
(:func:`load`) serves these files when live capture is impossible. Recording and
verifying (which run experiments) live in :mod:`helpers.recorder`::

    python -m helpers.recorder record [EXPERIMENT ...]   # as root: re-record (all by default)
    python -m helpers.recorder verify                    # anyone: check hashes + invariants
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorpusError

SYSCTLS = [
    "net.core.somaxconn",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_sack",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_wmem",
    "net.core.rmem_max",
    "net.core.wmem_max",
]


def corpus_dir() -> Path:
    """pcaps/ of the checkout (override with TCPCOURSE_CORPUS)."""
    env = os.environ.get("TCPCOURSE_CORPUS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "pcaps"


def manifest_path() -> Path:
    return corpus_dir() / "manifest.json"


def read_manifest() -> dict:
    path = manifest_path()
    if not path.exists():
        return {"version": 1, "entries": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path} is not valid JSON ({exc}).",
                          "restore it with `git checkout pcaps/manifest.json`.") from None


def slug(params: dict[str, Any]) -> str:
    if not params:
        return "default"
    return "__".join(f"{k}-{'default' if v is None else v}" for k, v in sorted(params.items()))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canon(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def find(experiment: str, params: dict[str, Any]) -> dict:
    entries = [e for e in read_manifest()["entries"] if e["experiment"] == experiment]
    for e in entries:
        if _canon(e["params"]) == _canon(params):
            return e
    if not entries:
        raise CorpusError(f"the corpus has no recordings of {experiment!r}.",
                          "record them as root: `python -m helpers.recorder record " + experiment + "`.")
    have = "; ".join(slug(e["params"]) for e in entries)
    raise CorpusError(f"the corpus has no recording of {experiment} with {slug(params)} (recorded: {have}).",
                      "pick recorded values, or run live as root.")


@dataclass
class Recording:
    """One corpus entry, hash-checked: its manifest entry, its measurements and its pcap."""

    entry: dict
    data: dict
    pcap: Path | None


def load(experiment: str, params: dict[str, Any]) -> Recording:
    """The recording of *experiment* with *params*, its files checked against their sha256."""
    entry = find(experiment, params)
    root = corpus_dir()
    pcap = root / entry["pcap"]["path"] if entry.get("pcap") else None
    data_path = root / entry["data"]["path"]
    for item, path in (("pcap", pcap), ("data", data_path)):
        if path is None:
            continue
        if not path.exists():
            raise CorpusError(f"corpus file {path} is missing.",
                              "restore it with `git checkout pcaps/` (or re-record as root).")
        digest = sha256(path)
        if digest != entry[item]["sha256"]:
            raise CorpusError(f"corpus file {path} does not match its sha256 in the manifest "
                              f"(file {digest[:12]}…, manifest {entry[item]['sha256'][:12]}…).",
                              "restore it with `git checkout pcaps/`; never edit recorded files.")
    return Recording(entry, json.loads(data_path.read_text()), pcap)


def reference_machine():
    """The machine the corpus was recorded on (the newest entry's snapshot; older entries
    give their sysctls and kernel only)."""
    from .rules import Machine
    entries = read_manifest()["entries"]
    if not entries:
        return None
    with_snapshot = [e for e in entries if e.get("machine")]
    pick = max(with_snapshot or entries, key=lambda e: e.get("date", ""))
    return Machine.from_manifest(pick)


def total_bytes() -> int:
    root = corpus_dir()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


if __name__ == "__main__":   # the older spelling of the command line
    import sys
    from .recorder import main
    sys.exit(main())
