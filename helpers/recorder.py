"""Recording and verifying the corpus: every privileged experiment run live over its grid.

    python -m helpers.recorder record [EXPERIMENT ...]   # as root: re-record (all by default)
    python -m helpers.recorder verify                    # anyone: check hashes + invariants
    python -m helpers.recorder list
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from .corpus import (SYSCTLS, _canon, corpus_dir, manifest_path, read_manifest, sha256, slug,
                     total_bytes)
from .errors import CorpusError

def _tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    from .caps import version_lines, find_tool
    for name in ("tcpdump", "tshark"):
        exe = find_tool(name)
        lines = version_lines([exe, "--version"]) if exe else []
        if lines:
            out[name] = lines[0]
        if name == "tcpdump" and len(lines) > 1:
            out["libpcap"] = lines[1]
    from importlib import metadata
    for pkg in ("scapy", "pyshark", "pandas", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sysctls() -> dict[str, str]:
    """The manifest's sysctls (text, as ``sysctl -n`` prints them with one space)."""
    from .errors import ParameterError
    from .kernel import sysctl
    out = {}
    for name in SYSCTLS:
        try:
            out[name] = str(sysctl(name))
        except ParameterError:   # not on this kernel (e.g. tcp_syn_linear_timeouts before 6.5)
            pass
    return out


def record(names: list[str] | None = None, *, progress=print) -> list[dict]:
    """Run each privileged experiment live over its grid and write the corpus (root)."""
    from .experiments.base import all_experiments

    os.environ["TCPCOURSE_MODE"] = "live"
    exps = {n: e for n, e in all_experiments().items() if e.records}
    if names:
        unknown = sorted(set(names) - set(exps))
        if unknown:
            raise CorpusError(f"no recordable experiment named {', '.join(unknown)}.",
                              f"choose from: {', '.join(sorted(exps))}.")
        exps = {n: exps[n] for n in names}
    root = corpus_dir()
    tools = _tool_versions()
    sysctls = _sysctls()
    new = []
    for name, exp in sorted(exps.items()):
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        grid = exp.grid()
        for i, params in enumerate(grid, 1):
            progress(f"[{name} {i}/{len(grid)}] {slug(params)}")
            with tempfile.TemporaryDirectory() as tmp:
                result = exp(_outdir=tmp, **params)
                exp.check(result)  # never record a file that does not show its claim
                entry = {"experiment": name, "chapter": exp.chapter, "params": params}
                # not with_suffix(): a slug such as "pause-1.5" already has a dot in it
                pcap_path, json_path = folder / f"{slug(params)}.pcap", folder / f"{slug(params)}.json"
                if result.pcap is not None:
                    shutil.copyfile(result.pcap, pcap_path)
                    entry["pcap"] = _file_entry(root, pcap_path)
                json_path.write_text(json.dumps(result.data, indent=1, sort_keys=True) + "\n")
                entry["data"] = _file_entry(root, json_path)
            entry.update(kernel=platform.release(), sysctls=sysctls, tools=tools, machine=result.machine,
                         date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         invariant=exp.claim)
            new.append(entry)
    # read-modify-write under a lock: two recorders (two experiments) may finish together
    import fcntl
    with open(root / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest()
        kept = [e for e in manifest["entries"] if e["experiment"] not in exps]
        manifest["entries"] = sorted(kept + new, key=lambda e: (e["chapter"], e["experiment"], slug(e["params"])))
        tmp = manifest_path().with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        tmp.replace(manifest_path())
    return new


def _file_entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256(path), "bytes": path.stat().st_size}


def verify(*, progress=None) -> list[str]:
    """Check every manifest entry: files present, hashes match, invariant holds, and every
    grid point of every recordable experiment is present. Returns a list of problems."""
    from .experiments.base import all_experiments

    problems: list[str] = []
    exps = all_experiments()
    root = corpus_dir()
    entries = read_manifest()["entries"]
    listed = set()
    for e in entries:
        name = e["experiment"]
        label = f"{name} {slug(e['params'])}"
        for key in ("pcap", "data"):
            if key in e:
                listed.add(e[key]["path"])
        exp = exps.get(name)
        if exp is None:
            problems.append(f"{label}: no experiment of that name exists")
            continue
        for key in ("kernel", "sysctls", "tools", "date", "invariant"):
            if not e.get(key):
                problems.append(f"{label}: manifest lacks {key}")
        try:
            result = exp.replay(e["params"], "verification")
            exp.check(result)
        except CorpusError as exc:
            problems.append(f"{label}: {exc.problem}")
        except AssertionError as exc:
            problems.append(f"{label}: invariant fails: {exc}")
        if progress:
            progress(f"checked {label}")
    for name, exp in exps.items():
        if not exp.records:
            continue
        have = {_canon(e["params"]) for e in entries if e["experiment"] == name}
        for params in exp.grid():
            if _canon(params) not in have:
                problems.append(f"{name} {slug(params)}: grid point not recorded")
    if root.exists():
        for path in root.rglob("*"):
            if path.is_file() and path.name not in ("manifest.json", ".manifest.lock") and path.relative_to(root).as_posix() not in listed:
                problems.append(f"{path.relative_to(root)}: file not in the manifest")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.recorder", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="re-record experiments live (root)")
    rec.add_argument("names", nargs="*")
    sub.add_parser("verify", help="check hashes and invariants")
    sub.add_parser("list", help="list recordings")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        new = record(args.names or None)
        print(f"recorded {len(new)} files; corpus is {total_bytes() / 1e6:.2f} MB")
        return 0
    if args.cmd == "list":
        for e in read_manifest()["entries"]:
            print(f"{e['chapter']}  {e['experiment']:24s} {slug(e['params'])}")
        return 0
    problems = verify(progress=None)
    for p in problems:
        print("FAIL", p)
    n = len(read_manifest()["entries"])
    print(f"{n - len({p.split(':')[0] for p in problems})} of {n} recordings verified; "
          f"corpus {total_bytes() / 1e6:.2f} MB")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
