"""A generator of corrupt and edge-case inputs for the fault-corpus table (test_fault_corpus.py).

Every ``make_*`` function writes fresh files under a folder it is given and returns their paths;
nothing here touches the bundled examples. The faults are the ones a new user hits: models with
non-finite weights, data files of the wrong shape or type, compiled artefacts that were truncated or
edited after compilation, and output folders that are not ours.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "examples" / "digits_chain.pt"
CHAIN_ARCH = f"{ROOT / 'examples' / 'digits_chain.py'}:build_model"
DATA = ROOT / "examples" / "digits_test.npz"
INPUT_SHAPE = (1, 8, 8)


# -- models -------------------------------------------------------------------------------------

def _edited_checkpoint(dst: Path, name: str, edit) -> Path:
    ckpt = torch.load(CHAIN, map_location="cpu", weights_only=True)
    edit(ckpt["model"])
    path = dst / name
    torch.save(ckpt, path)
    return path


def _set_first(value):
    def edit(state):
        key = "encoder.conv1.weight"
        w = state[key].clone()
        w.view(-1)[0] = value
        state[key] = w
    return edit


def make_models(dst: Path) -> dict[str, Path]:
    """Checkpoints of the chain demo with one non-finite weight, and a truncated checkpoint."""
    dst.mkdir(parents=True, exist_ok=True)
    truncated = dst / "truncated.pt"
    truncated.write_bytes(CHAIN.read_bytes()[:5000])
    return {"nan_weight": _edited_checkpoint(dst, "nan_weight.pt", _set_first(float("nan"))),
            "inf_weight": _edited_checkpoint(dst, "inf_weight.pt", _set_first(float("inf"))),
            "truncated_model": truncated}


# -- data files ---------------------------------------------------------------------------------

def _x(n=4, shape=INPUT_SHAPE, dtype=np.float32):
    return np.random.default_rng(0).uniform(0, 1, (n,) + tuple(shape)).astype(dtype)


def make_data(dst: Path) -> dict[str, Path]:
    """Data files that must be refused with a message naming the file (and the good one)."""
    dst.mkdir(parents=True, exist_ok=True)
    files = {
        "good": {"x": _x()},
        "wrong_channels": {"x": _x(shape=(3, 8, 8))},
        "wrong_size": {"x": _x(shape=(1, 7, 7))},
        "wrong_rank": {"x": _x(shape=(64,))},
        "zero_samples": {"x": _x(n=0)},
        "strings": {"x": np.array(["a", "b"])},
        "scalar": {"x": np.float32(1.0)},
        "nan": {"x": np.where(np.arange(4 * 64).reshape(4, 1, 8, 8) == 5, np.nan, _x())},
        "inf": {"x": np.where(np.arange(4 * 64).reshape(4, 1, 8, 8) == 5, np.inf, _x())},
        "complex": {"x": _x().astype(np.complex64)},
        "huge": {"x": _x() * np.float32(1e30)},
        "no_x": {"inputs": _x()},
        "label_count": {"x": _x(), "y": np.arange(3)},
    }
    paths = {}
    for name, arrays in files.items():
        paths[name] = dst / f"{name}.npz"
        np.savez(paths[name], **arrays)
    paths["plain_npy"] = dst / "plain.npy"
    np.save(paths["plain_npy"], _x())
    paths["truncated_npz"] = dst / "truncated.npz"
    paths["truncated_npz"].write_bytes(paths["good"].read_bytes()[:300])
    paths["not_a_zip"] = dst / "text.npz"
    paths["not_a_zip"].write_text("x = [1, 2, 3]\n")
    return paths


# -- compiled artefacts -------------------------------------------------------------------------

def _truncate(name, keep=0.5):
    def apply(folder: Path):
        p = folder / name
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return apply


def _edit_json(name, edit):
    def apply(folder: Path):
        p = folder / name
        doc = json.loads(p.read_text())
        edit(doc)
        p.write_text(json.dumps(doc, indent=2))
    return apply


def _write_text(name, text):
    def apply(folder: Path):
        (folder / name).write_text(text)
    return apply


def _delete(name):
    def apply(folder: Path):
        (folder / name).unlink()
    return apply


def _edit_zip_member(name, member, edit):
    """Rewrite one member of a zip (.npz) artefact with ``edit(bytes) -> bytes``."""
    def apply(folder: Path):
        p = folder / name
        with zipfile.ZipFile(p) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        members[member] = edit(members[member])
        with zipfile.ZipFile(p, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, data)
    return apply


def _graph_json(edit):
    def on_bytes(data: bytes) -> bytes:
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()
    return _edit_zip_member("graph.ir.npz", "graph.json", on_bytes)


def _routing_schema(edit):
    def on_bytes(data: bytes) -> bytes:
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()
    return _edit_zip_member("routing.npz", "schema.json", on_bytes)


def _add_unknown_field(doc):
    doc["nodes"][1]["fields"]["colour"] = "blue"


def _unknown_kind(doc):
    doc["nodes"][1]["kind"] = "Teleporter"


def _threshold_string(doc):
    node = next(n for n in doc["nodes"] if n["kind"] == "IFNeuron")
    node["fields"]["threshold_q"] = "big"


def _edge_to_nowhere(doc):
    doc["edges"].append([doc["nodes"][0]["name"], "ghost"])


def _graph_weight_shape(folder: Path):
    """Replace the first weight array of graph.ir.npz by one of the wrong shape (dtype kept)."""
    p = folder / "graph.ir.npz"
    with zipfile.ZipFile(p) as zf:
        name = next(n for n in sorted(zf.namelist()) if n.endswith("/weight_q.npy"))
    import io

    def edit(data: bytes) -> bytes:
        a = np.lib.format.read_array(io.BytesIO(data))
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype))
        return buf.getvalue()

    _edit_zip_member("graph.ir.npz", name, edit)(folder)


def _net_weight_shape(folder: Path):
    """network.net: the first layer's weight with one output channel too many."""
    with h5py.File(folder / "network.net", "r+") as f:
        g = f["layer/1"]
        w = g["weight"][()]
        del g["weight"]
        g.create_dataset("weight", data=np.zeros((w.shape[0] + 1,) + w.shape[1:], w.dtype))


def _net_negate(folder: Path):
    with h5py.File(folder / "network.net", "r+") as f:
        g = f["layer/1"]
        g["weight"][...] = -g["weight"][()]


def _net_drop_layer(folder: Path):
    with h5py.File(folder / "network.net", "r+") as f:
        del f["layer/1/neuron"]


def _scale_threshold(doc):
    for layer in doc["layers"]:
        if "threshold_q" in layer:
            layer["threshold_q"] = 2 * layer["threshold_q"]


def _scale_q(doc):
    doc["input"]["scale_q"] = 2 * doc["input"]["scale_q"]


# name -> (artefact kind 'sim' | 'loihi', edit of a copied output folder)
ARTIFACT_FAULTS = {
    "manifest_missing": ("sim", _delete("manifest.json")),
    "manifest_not_json": ("sim", _write_text("manifest.json", "{ not json")),
    "manifest_not_ours": ("sim", _edit_json("manifest.json", lambda d: [d.pop(k) for k in ("generator", "versions")
                                                                       if k in d])),
    "graph_weights_edited": ("sim", _graph_weight_shape),
    "sim_program_thresholds_edited": ("sim", _edit_json("sim_program.json", _scale_threshold)),
    "graph_unknown_field": ("sim", _graph_json(_add_unknown_field)),
    "graph_unknown_kind": ("sim", _graph_json(_unknown_kind)),
    "graph_edge_to_nowhere": ("sim", _graph_json(_edge_to_nowhere)),
    "graph_threshold_string": ("sim", _graph_json(_threshold_string)),
    "graph_truncated": ("sim", _truncate("graph.ir.npz")),
    "graph_missing": ("sim", _delete("graph.ir.npz")),
    "routing_truncated": ("sim", _truncate("routing.npz")),
    "routing_schema_edited": ("sim", _routing_schema(lambda d: d["layers"][0].pop("geometry"))),
    "net_truncated": ("loihi", _truncate("network.net")),
    "net_weight_shape": ("loihi", _net_weight_shape),
    "net_weights_negated": ("loihi", _net_negate),
    "net_layer_broken": ("loihi", _net_drop_layer),
    "sidecar_not_json": ("loihi", _write_text("loihi.json", '{"format": "neurodeploy-loihi/1",')),
    "sidecar_no_input": ("loihi", _edit_json("loihi.json", lambda d: d.pop("input"))),
    "sidecar_input_not_object": ("loihi", _edit_json("loihi.json", lambda d: d.update(input=[1, 2]))),
    "sidecar_scale_q_edited": ("loihi", _edit_json("loihi.json", _scale_q)),
    "sidecar_is_a_list": ("loihi", _write_text("loihi.json", "[1, 2, 3]\n")),
}


def make_artifact(compiled: dict[str, Path], fault: str, dst: Path, refresh_manifest: bool = False) -> Path:
    """Copy the compiled folder the fault applies to into ``dst`` and apply the fault.

    ``refresh_manifest``: rewrite the manifest's hashes after the edit, so that only the loader
    (not the manifest check) can catch it - what a user with --no-verify-manifest meets.
    """
    kind, apply = ARTIFACT_FAULTS[fault]
    folder = dst / f"{kind}_{fault}"
    shutil.copytree(compiled[kind], folder)
    apply(folder)
    if refresh_manifest and not fault.startswith("manifest_"):
        from neurodeploy.artifacts import sha256_file

        doc = json.loads((folder / "manifest.json").read_text())
        doc["artefacts"] = {n: sha256_file(folder / n) for n in doc["artefacts"] if (folder / n).is_file()}
        (folder / "manifest.json").write_text(json.dumps(doc, indent=2))
    return folder


def hashes(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders): to prove inputs were not touched."""
    from neurodeploy.artifacts import sha256_file

    out = {}
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        out.update({str(f): sha256_file(f) for f in files})
    return out


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden ones included, Python's own ``__pycache__`` of an --arch
    file excluded): to prove nothing was written."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if "__pycache__" not in p.parts)


# -- folders a user points -o at ----------------------------------------------------------------

def make_user_folders(dst: Path) -> dict[str, Path]:
    """``foreign``: a user's folder with notes and a subfolder; ``model_dir``: the folder holding a
    model, its --arch file and its data; ``a_file``: a regular file; ``arch_exit``: an --arch factory
    that calls sys.exit(3)."""
    foreign = dst / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "NOTES.txt").write_text("my notes\n")
    (foreign / "sub" / "results.csv").write_text("a,b\n1,2\n")
    model_dir = dst / "model_dir"
    model_dir.mkdir()
    for name in ("digits_chain.pt", "digits_chain.py", "digits_sfa.py", "digits_test.npz"):
        shutil.copy2(ROOT / "examples" / name, model_dir / name)
    a_file = dst / "a_file.txt"
    a_file.write_text("not a folder\n")
    arch_exit = dst / "arch_exit.py"
    arch_exit.write_text("import sys\n\n\ndef build_model():\n    sys.exit(3)\n")
    return {"foreign": foreign, "model_dir": model_dir, "a_file": a_file, "arch_exit": arch_exit}
