"""The write protocol under a kill: whatever step of a model's commit dies (its filters, its layers,
its models row), readers see whole models only, and the next run repairs the DB.

The kill is real: the extraction runs in a subprocess whose Lance commit of the chosen table calls
`os._exit`, so no exception handler and no clean-up runs, as when a machine loses power.
"""

import subprocess
import sys
from pathlib import Path

import lance
import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from torch import nn

from flows.extract import extract_catalog_local

REPO = Path(__file__).resolve().parents[1]

KILL_AT_COMMIT = """
import os, sys
import lance
from flows.extract import extract_catalog_local

catalog, db, table = sys.argv[1:]
commit = lance.LanceDataset.commit

def commit_or_die(base, operation, *args, **kwargs):
    if str(getattr(base, "uri", base)).rstrip("/").endswith(f"/{table}.lance"):
        os._exit(9)
    return commit(base, operation, *args, **kwargs)

lance.LanceDataset.commit = staticmethod(commit_or_die)
extract_catalog_local(catalog, db, progress=False)
"""


def save_model(path: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 2, 1))
    torch.save(model.state_dict(), path)
    return {name: tensor.numpy().copy() for name, tensor in model.state_dict().items() if tensor.dim() == 4}


def table(db: Path, name: str):
    return lance.dataset(str(db / f"{name}.lance")).to_table()


def whole_models(db: Path) -> dict:
    """What a reader sees: the `ok` models, each checked whole (all its layers and filters rows),
    as model_id -> its 3x3 kernels in (layer, out, in) order."""
    models, layers, filters = (table(db, name) for name in ("models", "layers", "filters"))
    seen = {}
    for row in models.filter(pc.equal(models["status"], "ok")).to_pylist():
        mine = filters.filter(pc.equal(filters["model_id"], row["model_id"]))
        assert mine.num_rows == row["n_filters_3x3"], row["model_id"]
        assert layers.filter(pc.equal(layers["model_id"], row["model_id"])).num_rows == row["n_conv_layers"], row["model_id"]
        order = np.lexsort([mine["in_index"].to_numpy(), mine["out_index"].to_numpy(), mine["layer_index"].to_numpy()])
        seen[row["model_id"]] = np.array(mine["weights"].to_pylist(), np.float32)[order]
    return seen


def kernels(weights: dict) -> np.ndarray:
    """The 3x3 kernels of a state dict's weights, in layer, out, in order (the reference)."""
    return np.concatenate([w.reshape(-1, 9) for w in weights.values() if w.shape[2:] == (3, 3)])


@pytest.mark.parametrize("table_killed, replacing", [
    ("filters", False), ("layers", False), ("models", False),
    ("models", True),  # a re-extracted model: its old rows deleted, its new filters and layers committed
], ids=["filters", "layers", "models", "models of a re-extracted model"])
def test_a_kill_at_any_commit_leaves_whole_models_and_the_next_run_repairs(tmp_path, table_killed, replacing):
    weights = {"a": save_model(tmp_path / "a.pt", 0), "b": save_model(tmp_path / "b.pt", 1)}
    db = tmp_path / "db"
    (tmp_path / "a.csv").write_text("model_id,source,uri\na,checkpoint,a.pt\n")
    extract_catalog_local(str(tmp_path / "a.csv"), str(db), progress=False)
    (tmp_path / "ab.csv").write_text("model_id,source,uri\na,checkpoint,a.pt\nb,checkpoint,b.pt\n")
    if replacing:  # `a` changes on disk, so the next run re-extracts it: its stored rows are deleted first
        weights["a"] = save_model(tmp_path / "a.pt", 2)
        (tmp_path / "ab.csv").write_text("model_id,source,uri\na,checkpoint,a.pt\n")

    killed = subprocess.run([sys.executable, "-c", KILL_AT_COMMIT, str(tmp_path / "ab.csv"), str(db), table_killed],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]

    seen = whole_models(db)  # the reader's view right after the kill: whole models, nothing else
    killed_model = "a" if replacing else "b"
    assert killed_model not in seen
    if not replacing:
        assert np.array_equal(seen["a"], kernels(weights["a"]))

    extract_catalog_local(str(tmp_path / "ab.csv"), str(db), progress=False)
    repaired = whole_models(db)
    assert set(repaired) == ({"a"} if replacing else {"a", "b"})
    for model_id, kernels_seen in repaired.items():
        assert np.array_equal(kernels_seen, kernels(weights[model_id])), model_id
    for name in ("filters", "layers"):  # no rows of incomplete models are left behind
        assert set(table(db, name)["model_id"].to_pylist()) == set(repaired)


def test_a_model_whose_data_files_cannot_be_written_fails_alone(tmp_path, monkeypatch):
    import flows.extract

    weights = {name: save_model(tmp_path / f"{name}.pt", seed) for seed, name in enumerate("abc")}
    write = flows.extract.FilterDB.write_model_files

    def disk_full_for_b(self, row, filters, layers):
        if row["model_id"] == "b":
            raise OSError(28, "No space left on device")
        return write(self, row, filters, layers)

    monkeypatch.setattr(flows.extract.FilterDB, "write_model_files", disk_full_for_b)
    (tmp_path / "abc.csv").write_text("model_id,source,uri\na,checkpoint,a.pt\nb,checkpoint,b.pt\nc,checkpoint,c.pt\n")
    db = tmp_path / "db"
    summary = extract_catalog_local(str(tmp_path / "abc.csv"), str(db), progress=False)
    assert sorted(summary.stored) == ["a", "c"] and list(summary.failed) == ["b"]
    (error,) = [r["error"] for r in table(db, "models").to_pylist() if r["model_id"] == "b" and r["status"] == "failed"]
    assert "writing its data files failed: OSError: [Errno 28] No space left on device" in error
    seen = whole_models(db)
    assert set(seen) == {"a", "c"} and all(np.array_equal(seen[m], kernels(weights[m])) for m in seen)


def test_a_model_whose_rows_cannot_be_committed_fails_alone_and_its_group_is_stored(tmp_path, monkeypatch, ray_session):
    """The driver commits the models that arrived together in one group; when the group's commit fails
    for one model's rows, the group is undone and committed model by model, and only that model fails."""
    import flows.extract
    from flows.extract import extract_catalog

    weights = {name: save_model(tmp_path / f"{name}.pt", seed) for seed, name in enumerate("abc")}
    append = flows.extract.FilterDB.append_models

    def refuse_b(self, rows):
        if any(row["model_id"] == "b" and row["status"] == "ok" for row in rows):
            raise OSError("simulated: the models row of b cannot be written")
        return append(self, rows)

    monkeypatch.setattr(flows.extract.FilterDB, "append_models", refuse_b)
    (tmp_path / "abc.csv").write_text("model_id,source,uri\na,checkpoint,a.pt\nb,checkpoint,b.pt\nc,checkpoint,c.pt\n")
    db = tmp_path / "db"
    summary = extract_catalog(str(tmp_path / "abc.csv"), str(db), commit_every_s=600, progress=False)  # one group
    assert sorted(summary.stored) == ["a", "c"] and list(summary.failed) == ["b"]
    (error,) = [r["error"] for r in table(db, "models").to_pylist() if r["model_id"] == "b"]
    assert "committing its rows failed: OSError: simulated: the models row of b cannot be written" in error
    seen = whole_models(db)
    assert set(seen) == {"a", "c"} and all(np.array_equal(seen[m], kernels(weights[m])) for m in seen)
    for name in ("filters", "layers"):
        assert set(table(db, name)["model_id"].to_pylist()) == {"a", "c"}
