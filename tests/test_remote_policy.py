"""The in-repository DVC remote holds exactly the committed state (docs/sharing.md, "How big
the repository may grow", rule 1): every pushed output of ``dvc.lock`` is there, so a fresh
clone restores it, and nothing else is, since an older state's objects are already in git's
history (checking out an older commit brings its own ``dvc-remote/``)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import yaml
from conftest import REPO_ROOT, git

SPEC = importlib.util.spec_from_file_location(
    "remote_size", REPO_ROOT / "scripts" / "remote_size.py"
)
remote_size = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(remote_size)


def _state(root):
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    flags = remote_size.pushed_flags(root / "dvc.yaml")
    return remote_size.remote_state(lock, root / "dvc-remote", flags)


def test_the_checked_out_remote_holds_exactly_the_committed_state():
    state = _state(REPO_ROOT)
    assert state["missing"] == [], "dvc push -r origin: a fresh clone could not restore these"
    assert state["stale"] == [], "dvc gc -w -c -r origin: objects of older states"


def test_the_check_sees_a_missing_and_a_stale_object(tmp_path):
    """A planted remote: one output's object present, one absent, one unrelated object."""
    remote = tmp_path / "dvc-remote"
    present, absent, old = "a" * 32, "b" * 32, "c" * 32
    manifest = "d" * 32 + ".dir"
    for md5, text in ((present, "x"), (old, "old"), (manifest, json.dumps([{"md5": absent}]))):
        path = remote_size.object_path(remote, md5)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"s": {"cmd": "x", "outs": ["f", "d", {"t": {"push": False}}]}}})
    )
    lock = {
        "stages": {
            "s": {
                "outs": [
                    {"path": "f", "md5": present},
                    {"path": "d", "md5": manifest},
                    {"path": "t", "md5": "e" * 32},  # push: false, never wanted
                ]
            }
        }
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    state = _state(tmp_path)
    assert state["missing"] == [absent]
    assert state["stale"] == [old] and state["stale_bytes"] == 3


def _commit_state(repo, payload: bytes, message: str) -> None:
    (repo / "dvc-remote" / "files").mkdir(parents=True, exist_ok=True)
    (repo / "dvc-remote" / "files" / "object").write_bytes(payload)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def test_a_partial_clone_holds_only_the_current_state(tmp_path):
    """Three states of a 2 MB incompressible remote object: a full clone carries all three
    in its history, the README's ``git clone --filter=blob:none`` only the checked-out one,
    and ``clone_size`` estimates what that clone really weighs (measured on disk)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "uploadpack.allowFilter", "true")
    rng = np.random.default_rng(0)
    for state in range(3):
        _commit_state(repo, rng.bytes(2_000_000), f"state {state}")
    size = remote_size.clone_size(repo, repo / "dvc-remote")
    assert size["git"] > 6_000_000  # every state's object in the packed history
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--filter=blob:none", "--no-local", f"file://{repo}", str(clone))
    on_disk = sum(p.stat().st_size for p in clone.rglob("*") if p.is_file())
    assert size["partial"] == 4_000_000  # one state's object, checked out and packed
    assert abs(on_disk - size["partial"]) < 0.03 * size["partial"]  # + git's own files
    assert on_disk < size["total"] - 3_900_000  # two older states left on the server


def test_a_per_seed_output_reaches_the_stages_that_read_its_folder():
    """collect@s writes ``data/collect/seed{s}`` and correlate lists ``data/collect``: a rerun
    of one collect reaches correlate and what follows (it was counted as collect's 4 MB alone)."""
    lock = {
        "stages": {
            "collect@1": {"outs": [{"path": "data/collect/seed1"}], "deps": []},
            "correlate": {
                "outs": [{"path": "data/correlate"}],
                "deps": [{"path": "data/collect"}],
            },
            "baseline": {
                "outs": [{"path": "data/baseline"}],
                "deps": [{"path": "data/correlate/summary.json"}],
            },
            "syntax": {"outs": [{"path": "data/syntax"}], "deps": [{"path": "data/tokens"}]},
        }
    }
    assert remote_size.downstream(lock, "collect@1") == ["collect@1", "correlate", "baseline"]
    committed = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())
    assert {"correlate", "report"} <= set(remote_size.downstream(committed, "collect@1"))


def test_a_parameter_change_reruns_the_stages_that_list_it_and_all_after_them():
    """A parameter reaches the stages that list it or its section, then everything
    downstream; validate's fixed line reaches nothing; a list is one parameter."""
    lock = {
        "stages": {
            "validate": {
                "params": {"params.yaml": {"analysis": {}, "universality": {}}},
                "outs": [{"path": "data/params.valid"}],
                "deps": [],
            },
            "collect@1": {
                "params": {"params.yaml": {"analysis": {}}},
                "outs": [{"path": "data/collect/seed1"}],
                "deps": [{"path": "data/params.valid"}],
            },
            "correlate": {
                "params": {"params.yaml": {"analysis.split": "train"}},
                "outs": [{"path": "data/correlate"}],
                "deps": [{"path": "data/collect"}, {"path": "data/params.valid"}],
            },
            "universality": {
                "params": {"params.yaml": {"universality.threshold": 0.5}},
                "outs": [{"path": "data/universality"}],
                "deps": [{"path": "data/correlate"}, {"path": "data/params.valid"}],
            },
        }
    }
    rows = [
        {"stage": name, "pushed": size}
        for name, size in (
            ("validate", 0),
            ("collect@1", 4),
            ("correlate", 20),
            ("universality", 1),
        )
    ]
    params = {
        "analysis": {"split": "train", "exclude": ["special"]},
        "universality": {"threshold": 0.5},
    }
    keys = remote_size.parameter_leaves(params)
    assert keys == ["analysis.split", "analysis.exclude", "universality.threshold"]
    costs = remote_size.parameter_costs(lock, rows, keys)
    assert costs["analysis.split"]["stages"] == ["validate", "collect@1", "correlate"]
    assert costs["analysis.split"]["bytes"] == 4 + 20 + 1
    # correlate lists analysis.split only: a change of analysis.exclude reaches it through collect
    assert costs["analysis.exclude"]["stages"] == ["validate", "collect@1"]
    assert costs["analysis.exclude"]["rerun"] == [
        "validate",
        "collect@1",
        "correlate",
        "universality",
    ]
    # validate lists universality too, but its unchanged output reruns nothing after it
    assert costs["universality.threshold"]["rerun"] == ["validate", "universality"]
    assert costs["universality.threshold"]["bytes"] == 1
    lines = remote_size.render_parameters(costs, change_mb=20e-6, every=False)
    assert [line.split()[0] for line in lines[2:4]] == ["analysis.split", "universality.threshold"]
    assert lines[2].endswith("OVER") and not lines[3].endswith("OVER")


def test_the_report_fits_a_120_column_terminal():
    """The committed state's report, every parameter listed, in at most 120 columns; the
    analysis section's costliest parameter reruns every collect."""
    numbers = remote_size.report(REPO_ROOT)
    text = remote_size.render(numbers, 400, 25, every=True)
    assert max(len(line) for line in text.splitlines()) <= 120
    analysis = numbers["parameters"]["analysis.max_sequences"]
    collects = {name for name in analysis["stages"] if name.startswith("collect@")}
    assert len(collects) == len(
        yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]["seeds"]
    )
    assert analysis["bytes"] > numbers["change"]["correlate"]


def test_collect_keeps_no_within_layer_covariances_in_the_remote():
    """The default group is below ``correlate.full_pairs_max_neurons``: each collect output
    holds its moments only (the within-layer covariances, 4.2 MB a model, are correlate's to
    take), so a change of ``analysis.*`` costs what the correlate rerun costs and little more
    (docs/sharing.md)."""
    numbers = remote_size.report(REPO_ROOT)
    collects = [row for row in numbers["stages"] if row["stage"].startswith("collect@")]
    assert collects and all(row["outputs"] < 500_000 for row in collects)
    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text())["stages"]
    for name in (row["stage"] for row in collects):
        (out,) = lock[name]["outs"]
        assert out["nfiles"] == 2, (name, out)  # moments.parquet, summary.json
    extra = numbers["parameters"]["analysis.batch_size"]["bytes"] - numbers["change"]["correlate"]
    assert 0 < extra < 5 * 500_000 + 4_000_000  # the collects, emergence and null measures
