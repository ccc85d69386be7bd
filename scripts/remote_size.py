"""What the repository weighs: a clone, each stage's outputs in the in-repo DVC remote, a change.

``python scripts/remote_size.py`` (from the repository root, after ``dvc repro`` or a pull)
prints, from ``dvc.lock``, ``dvc.yaml`` and ``dvc-remote/`` (the remote committed to git,
docs/sharing.md):

- **clone**: git's packed history (what ``git clone`` transfers) plus the checked-out
  ``dvc-remote/`` (a clone holds it twice: packed in ``.git`` and as files); and the
  **partial clone** the README's Quickstart makes (``git clone --filter=blob:none``: every
  commit, but only the checked-out commit's files), whose ``.git`` holds the current tree's
  blobs instead of every older state's (estimated: blobs counted uncompressed, git's own
  files not counted);
- **per stage**: the bytes of its outputs, of those dvc.yaml pushes (not ``push: false``, not
  ``cache: false``), and of its objects now in ``dvc-remote/`` (an object shared with another
  stage counted once, at the first);
- **per change**: what re-running a stage and everything downstream of it adds to git, at
  most: the pushed outputs of those stages (every one of their objects new);
- **per parameter**: the same for a change of one parameter of ``params.yaml``: the stages
  that list it (or its section) in ``dvc.lock`` and everything downstream of them; by section
  (the parameter of each that costs most), every parameter with ``--parameters``.

``validate``'s output (``data/params.valid``) is the same line for any valid parameters, so
nothing downstream of it reruns when a parameter changes (``INVARIANT_OUTPUTS``).

``--budget-clone-mb`` / ``--budget-change-mb`` (400 / 25, docs/sharing.md) mark what is over;
``--json`` prints the numbers instead. Exit status 0 always: a report, not a check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

MB = 1e6
INVARIANT_OUTPUTS = {"data/params.valid"}
"""Outputs whose bytes no parameter changes (the validate stage writes one fixed line): a
rerun of their stage reaches no stage after it."""


def object_path(remote: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object ``md5`` in a local remote."""
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def listed_objects(remote: Path, md5: str) -> list[str]:
    """The md5s of one output's objects as ``remote`` can tell them: the file itself, or a
    directory's manifest and, when the manifest is there, every file it lists."""
    manifest = object_path(remote, md5)
    if not (md5.endswith(".dir") and manifest.is_file()):
        return [md5]
    return [md5, *(entry["md5"] for entry in json.loads(manifest.read_text()))]


def output_objects(remote: Path, md5: str) -> dict[str, int]:
    """``{md5: bytes}`` of the objects of one output present in ``remote``: the file itself, or
    a directory's manifest and every file it lists."""
    if not object_path(remote, md5).is_file():
        return {}
    paths = {part: object_path(remote, part) for part in listed_objects(remote, md5)}
    return {part: path.stat().st_size for part, path in paths.items() if path.is_file()}


def pushed_flags(dvc_yaml: Path) -> dict[str, bool]:
    """``{output path: pushed}`` from dvc.yaml (``push: false`` or ``cache: false``: not
    pushed); outputs of ``foreach`` stages are listed under their templated path."""
    flags: dict[str, bool] = {}
    for stage in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).values():
        body = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            for out in body.get(key) or []:
                path, opts = (out, {}) if isinstance(out, str) else next(iter(out.items()))
                opts = opts or {}
                flags[path] = opts.get("push", True) and opts.get("cache", True)
    return flags


def _pushed(flags: dict[str, bool], path: str) -> bool:
    """Whether ``path`` is pushed (a foreach output matches its template's first part)."""
    if path in flags:
        return flags[path]
    return all(
        ok
        for template, ok in flags.items()
        if "${" in template and path.startswith(template.split("${")[0])
    )


def stage_sizes(lock: dict, remote: Path, flags: dict[str, bool]) -> list[dict[str, Any]]:
    """Per stage of ``lock``: bytes of its outputs, of those dvc.yaml pushes, and of its
    objects in the remote (an object shared with an earlier stage counted there)."""
    seen: set[str] = set()
    rows = []
    for name, stage in lock.get("stages", {}).items():
        outs = stage.get("outs") or []
        in_remote = 0
        for out in outs:
            for md5, size in output_objects(remote, out.get("md5") or "").items():
                in_remote += 0 if md5 in seen else size
                seen.add(md5)
        total = sum(out.get("size") or 0 for out in outs)
        pushed = sum(out.get("size") or 0 for out in outs if _pushed(flags, out["path"]))
        rows.append({"stage": name, "outputs": total, "pushed": pushed, "in_remote": in_remote})
    return rows


def _overlap(dep: str, out: str) -> bool:
    """``dep`` reads ``out``: the same path, a file inside it, or a folder holding it (the
    stages after collect list ``data/collect``, each collect@s writes ``data/collect/seed{s}``)."""
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def downstream(lock: dict, start: str) -> list[str]:
    """``start`` and every stage of ``lock`` that depends on it, directly or not."""
    stages = lock.get("stages", {})
    outs = {name: [o["path"] for o in s.get("outs") or []] for name, s in stages.items()}
    deps = {name: [d["path"] for d in s.get("deps") or []] for name, s in stages.items()}
    found, frontier = [start], [start]
    while frontier:
        made = [o for o in outs[frontier.pop()] if o not in INVARIANT_OUTPUTS]
        for name in stages:
            uses = any(_overlap(d, o) for d in deps[name] for o in made)
            if uses and name not in found:
                found.append(name)
                frontier.append(name)
    return found


def change_costs(lock: dict, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per stage: the pushed output bytes of it and everything downstream (what re-running
    it adds to git at most)."""
    pushed = {row["stage"]: row["pushed"] for row in rows}
    return {row["stage"]: sum(pushed[s] for s in downstream(lock, row["stage"])) for row in rows}


def parameter_leaves(params: dict, prefix: str = "") -> list[str]:
    """Every parameter of a params file, dotted (``analysis.max_sequences``); a list or an
    empty mapping is one parameter."""
    leaves = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves += parameter_leaves(value, name + ".")
        else:
            leaves.append(name)
    return leaves


def _lists(listed: str, key: str) -> bool:
    """A stage whose params list ``listed`` (a section or a dotted key) reruns when ``key``
    changes."""
    return key == listed or key.startswith(listed + ".")


def parameter_costs(
    lock: dict, rows: list[dict[str, Any]], keys: list[str]
) -> dict[str, dict[str, Any]]:
    """Per parameter of ``keys``: ``stages`` (those that list it or its section in ``lock``),
    ``rerun`` (they and everything downstream) and ``bytes`` (their pushed outputs: what the
    change adds to git at most)."""
    pushed = {row["stage"]: row["pushed"] for row in rows}
    listed = {
        name: [key for values in (stage.get("params") or {}).values() for key in values]
        for name, stage in lock.get("stages", {}).items()
    }
    reach = {name: downstream(lock, name) for name in listed}
    costs = {}
    for key in keys:
        first = [name for name, names in listed.items() if any(_lists(n, key) for n in names)]
        rerun = list(dict.fromkeys(s for name in first for s in reach[name]))
        costs[key] = {"stages": first, "rerun": rerun, "bytes": sum(pushed[s] for s in rerun)}
    return costs


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def head_tree_bytes(root: Path) -> int:
    """Bytes of every file of the checked-out commit (``git ls-tree -r -l HEAD``)."""
    listing = _git(root, "ls-tree", "-r", "-l", "HEAD").splitlines()
    return sum(int(line.split()[3]) for line in listing if line.split()[3] != "-")


def clone_size(root: Path, remote: Path) -> dict[str, int]:
    """Bytes of git's packed history and of the checked-out remote (``total``: a full
    clone), and of a ``--filter=blob:none`` clone (``partial``: the current tree's blobs in
    ``.git`` plus the checked-out remote)."""
    values = dict(line.split(": ") for line in _git(root, "count-objects", "-v").splitlines())
    packed = (int(values["size-pack"]) + int(values["size"])) * 1024
    files = sum(p.stat().st_size for p in remote.rglob("*") if p.is_file())
    partial = head_tree_bytes(root) + files
    return {"git": packed, "remote_files": files, "total": packed + files, "partial": partial}


def wanted_objects(lock: dict, remote: Path, flags: dict[str, bool]) -> dict[str, set[str]]:
    """The objects the state in ``lock`` needs in ``remote``: ``{"present": ..., "missing":
    ...}`` md5s of every pushed output (a directory: its manifest and every file it lists;
    a manifest absent from the remote counts as missing, its files unknown)."""
    present: set[str] = set()
    missing: set[str] = set()
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs") or []:
            md5 = out.get("md5") or ""
            if not md5 or not _pushed(flags, out["path"]):
                continue
            for part in listed_objects(remote, md5):
                (present if object_path(remote, part).is_file() else missing).add(part)
    return {"present": present, "missing": missing}


def remote_state(lock: dict, remote: Path, flags: dict[str, bool]) -> dict[str, Any]:
    """Whether ``remote`` holds exactly the state of ``lock`` (docs/sharing.md, rule 1):
    ``missing`` (md5s a fresh clone could not restore), ``stale`` (md5s no pushed output of
    this state uses: an older state's, kept by git's history) and ``stale_bytes``."""
    wanted = wanted_objects(lock, remote, flags)
    files = {
        p.parent.name + p.name: p.stat().st_size
        for p in (remote / "files" / "md5").glob("*/*")
        if p.is_file()
    }
    stale = sorted(set(files) - wanted["present"])
    return {
        "missing": sorted(wanted["missing"]),
        "stale": stale,
        "stale_bytes": sum(files[md5] for md5 in stale),
    }


def report(root: Path) -> dict[str, Any]:
    """Every number this script prints, for the repository at ``root``."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    remote = root / "dvc-remote"
    flags = pushed_flags(root / "dvc.yaml")
    rows = stage_sizes(lock, remote, flags)
    keys = parameter_leaves(yaml.safe_load((root / "params.yaml").read_text()) or {})
    return {
        "clone": clone_size(root, remote),
        "stages": rows,
        "change": change_costs(lock, rows),
        "parameters": parameter_costs(lock, rows, keys),
        "remote": remote_state(lock, remote, flags),
    }


def render_parameters(costs: dict[str, dict[str, Any]], change_mb: float, every: bool) -> list[str]:
    """Lines of the parameter changes: per section the parameter that costs most (``every``:
    each parameter), with the stages it reruns; over-budget numbers marked."""
    shown = list(costs)
    if not every:
        costliest: dict[str, str] = {}  # section -> its costliest parameter
        for key, cost in costs.items():
            section = key.split(".")[0]
            if section not in costliest or cost["bytes"] > costs[costliest[section]]["bytes"]:
                costliest[section] = key
        shown = list(costliest.values())
    width = max([len(key) for key in shown] + [9])
    lines = [
        f"parameter change: the stages that list it and all downstream (budget {change_mb:.0f} MB)",
        f"{'parameter':<{width}} {'change MB':>9} {'stages rerun':>12}  first",
    ]
    for key in shown:
        cost = costs[key]
        mark = "  OVER" if cost["bytes"] > change_mb * MB else ""
        first = ", ".join(cost["stages"])
        first = first if len(first) <= 40 else first[:37] + "..."
        lines.append(
            f"{key:<{width}} {cost['bytes'] / MB:>9.1f} {len(cost['rerun']):>12}  {first}{mark}"
        )
    if not every:
        lines.append("(per section its costliest parameter; --parameters lists every one)")
    return lines


def render(numbers: dict[str, Any], clone_mb: float, change_mb: float, every: bool = False) -> str:
    """The report as text, over-budget numbers marked (``every``: each parameter's change)."""
    clone = numbers["clone"]
    over = "  OVER" if clone["partial"] > clone_mb * MB else ""
    width = max(len(row["stage"]) for row in numbers["stages"])
    lines = [
        f"clone --filter=blob:none (the README's): about {clone['partial'] / MB:.0f} MB "
        f"(budget {clone_mb:.0f} MB){over}",
        f"full clone: {clone['total'] / MB:.0f} MB (git history {clone['git'] / MB:.0f} MB + "
        f"dvc-remote/ files {clone['remote_files'] / MB:.0f} MB)",
        "",
        f"{'stage':<{width}} {'outputs MB':>10} {'pushed MB':>9} {'in remote MB':>12} "
        f"{'change MB':>9}",
    ]
    for row in numbers["stages"]:
        change = numbers["change"][row["stage"]]
        mark = "  OVER" if change > change_mb * MB else ""
        lines.append(
            f"{row['stage']:<{width}} {row['outputs'] / MB:>10.1f} {row['pushed'] / MB:>9.1f} "
            f"{row['in_remote'] / MB:>12.1f} {change / MB:>9.1f}{mark}"
        )
    lines.append(f"\nchange: re-running the stage and all downstream (budget {change_mb:.0f} MB)")
    lines += ["", *render_parameters(numbers["parameters"], change_mb, every)]
    state = numbers["remote"]
    lines.append(
        f"dvc-remote/: {len(state['missing'])} objects of this state missing, "
        f"{len(state['stale'])} of older states ({state['stale_bytes'] / MB:.1f} MB; "
        "`dvc gc -w -c -r origin` removes them)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the sizes of the repository in the current folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--budget-clone-mb", type=float, default=400)
    parser.add_argument("--budget-change-mb", type=float, default=25)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--parameters", action="store_true", help="every parameter's change, not per section"
    )
    args = parser.parse_args(argv)
    numbers = report(args.root)
    if args.json:
        print(json.dumps(numbers, indent=2))
    else:
        print(render(numbers, args.budget_clone_mb, args.budget_change_mb, args.parameters))


if __name__ == "__main__":
    main()
