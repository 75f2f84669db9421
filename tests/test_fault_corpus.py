"""The fault corpus: bad inputs and damaged artefacts x expected outcome, across every command.

Each row runs the CLI in-process and checks what the README promises: the exit status (2 for a
fault the user can fix), one error line matching the row's pattern, no traceback, nothing written
(no output folder, no temp folder, no stray file in the working folder) and every input file
unchanged (sha256). The inputs come from :mod:`fault_corpus`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_corpus as fc  # noqa: E402
from neurodeploy.cli import main  # noqa: E402

ARCH = fc.CHAIN_ARCH
ERROR_LINE = re.compile(r"^(error|Error|internal error):", re.M)


@dataclass
class Corpus:
    root: Path
    models: dict
    data: dict
    user: dict
    compiled: dict


@dataclass
class Ctx:
    """What a row's argv builder may use: the corpus, a fresh working folder (the cwd), and
    ``art(fault, nv)``: a fresh copy of a compiled folder with ``fault`` applied (``nv``: manifest
    hashes refreshed, so only the loader can catch it)."""
    c: Corpus
    work: Path
    art: Callable
    out: Path | None = None  # a successful row's output folder: only our artefacts in it may change

    def o(self, path: Path) -> Path:
        self.out = Path(path)
        return self.out


@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Ctx], list]
    status: int
    patterns: tuple = ()           # regexes the error line (status 0: stderr) must all match
    cwd: Callable | None = None    # working folder other than ctx.work
    marks: tuple = field(default=())


# Rows whose fix belongs to work in progress elsewhere in issue 8 (output-folder safety; input
# validation): expected to fail until it lands.
PENDING: dict = {}


def R(id, status, patterns, argv, cwd=None, marks=()):
    if id in PENDING:
        marks = (*marks, pytest.mark.xfail(strict=False, reason=PENDING[id]))
    return pytest.param(Row(id, argv, status, tuple([patterns] if isinstance(patterns, str) else patterns),
                            cwd, marks), id=id, marks=marks)


def M(ctx, model=None, arch=ARCH):
    return [model or fc.CHAIN, "--arch", arch]


def D(ctx, name):
    return ctx.c.data[name]


def simulate(folder, *extra):
    return ["simulate", folder, "--data", fc.DATA, "--limit", "2", "--no-progress", *extra]


def run(folder, *extra, runtime="sim"):
    return ["run", folder, "--data", fc.DATA, "--limit", "2", "--runtime", runtime, *extra]


def route(folder, *extra):
    return ["route", folder, "--layer", "0", "--address", "0,0,0", *extra]


NONFINITE = r"(?i)nan|non-finite|not finite|infinite|inf\b"
FOREIGN = r"(?i)--force|not .*(neurodeploy|output)|foreign"
CLASH = r"(?i)contains the model|is the current directory|could replace|--force"
NV = "--no-verify-manifest"

DATA_FAULTS = {  # data file -> what the message must say besides the file's name
    "wrong_channels": r"(?i)channel|shape",
    "wrong_size": r"(?i)shape",
    "wrong_rank": r"(?i)shape",
    "zero_samples": r"(?i)zero|no samples|empty",
    "strings": r"(?i)not numbers|numeric|dtype|<U1|str",
    "scalar": r"(?i)scalar|shape|no samples",
    "nan": NONFINITE,
    "inf": NONFINITE,
    "complex": r"(?i)complex",
    "no_x": r"'x'",
    "label_count": r"(?i)label",
    "truncated_npz": r"(?i)cannot read|truncat|corrupt|not a",
    "not_a_zip": r"(?i)cannot read|not a|pickle",
}

ROWS = [
    # -- models with non-finite weights / unreadable models / --arch faults -----------------------
    R("compile-nan-weight", 2, NONFINITE, lambda x: ["compile", *M(x, x.c.models["nan_weight"]), "-o", x.work / "o"]),
    R("compile-inf-weight-loihi", 2, NONFINITE,
      lambda x: ["compile", *M(x, x.c.models["inf_weight"]), "-t", "loihi", "-o", x.work / "o"]),
    R("compile-nan-weight-loihi", 2, NONFINITE,
      lambda x: ["compile", *M(x, x.c.models["nan_weight"]), "-t", "loihi", "-o", x.work / "o"]),
    R("compile-inf-weight-speck", 2, NONFINITE,
      lambda x: ["compile", *M(x, x.c.models["inf_weight"]), "-t", "speck", "-o", x.work / "o"]),
    R("verify-nan-weight", 2, NONFINITE,
      lambda x: ["verify", *M(x, x.c.models["nan_weight"]), "--data", fc.DATA, "--limit", "4"]),
    R("profile-inf-weight", 2, NONFINITE,
      lambda x: ["profile", *M(x, x.c.models["inf_weight"]), "--data", fc.DATA, "--limit", "4"]),
    R("inspect-truncated-model", 2, r"truncated\.pt", lambda x: ["inspect", *M(x, x.c.models["truncated_model"])]),
    R("compile-arch-sys-exit", 2, r"(?i)exit", lambda x: ["compile", *M(x, arch=f"{x.c.user['arch_exit']}:build_model"),
                                                          "-o", x.work / "o"]),
    # -- data files (profile: the cheapest command that reads them) -------------------------------
    *[R(f"profile-data-{name}", 2, (rf"{fc_name}", extra),
        lambda x, n=name: ["profile", *M(x), "--data", D(x, n)])
      for name, extra in DATA_FAULTS.items()
      for fc_name in [{"truncated_npz": "truncated", "not_a_zip": "text"}.get(name, name)]],
    R("profile-data-plain-npy", 0, (), lambda x: ["profile", *M(x), "--data", D(x, "plain_npy")]),
    R("verify-data-nan", 2, ("nan", NONFINITE), lambda x: ["verify", *M(x), "--data", D(x, "nan")]),
    R("verify-data-huge", 2, r"(?i)range|magnitude|1e\+30",
      lambda x: ["verify", *M(x), "--data", D(x, "huge")]),
    R("verify-data-zero-samples", 2, r"zero_samples", lambda x: ["verify", *M(x), "--data", D(x, "zero_samples")]),
    R("compile-data-nan", 2, ("nan", NONFINITE), lambda x: ["compile", *M(x), "--data", D(x, "nan"), "-o", x.work / "o"]),
    R("verify-data-wrong-channels", 2, r"wrong_channels", lambda x: ["verify", *M(x), "--data", D(x, "wrong_channels")]),
    R("verify-data-scalar", 2, r"scalar", lambda x: ["verify", *M(x), "--data", D(x, "scalar")]),
    R("simulate-data-zero-samples", 2, r"zero_samples",
      lambda x: ["simulate", x.art(), "--data", D(x, "zero_samples"), "--no-progress"]),
    R("run-data-strings", 2, r"strings", lambda x: ["run", x.art(kind="loihi"), "--data", D(x, "strings"),
                                                     "--runtime", "sim"]),
    R("run-data-complex", 2, r"complex", lambda x: ["run", x.art(kind="loihi"), "--data", D(x, "complex"),
                                                     "--runtime", "sim"]),
    R("compile-data-strings", 2, r"strings", lambda x: ["compile", *M(x), "--data", D(x, "strings"), "-o", x.work / "o"]),
    R("compile-calibration-nan", 2, ("nan", NONFINITE),
      lambda x: ["compile", *M(x), "-t", "loihi", "--calibration", D(x, "nan"), "-o", x.work / "o"]),
    R("compile-data-nan-verify-keeps-previous-output", 2, ("nan", NONFINITE),
      lambda x: ["compile", *M(x), "--data", D(x, "nan"), "--verify", "-o", x.art()]),
    R("simulate-data-nan", 2, ("nan", NONFINITE), lambda x: ["simulate", x.art(), "--data", D(x, "nan"), "--no-progress"]),
    R("simulate-data-wrong-channels", 2, r"wrong_channels",
      lambda x: ["simulate", x.art(), "--data", D(x, "wrong_channels"), "--no-progress"]),
    R("simulate-data-huge", 2, r"(?i)range|magnitude|1e\+30",
      lambda x: ["simulate", x.art(), "--data", D(x, "huge"), "--no-progress"]),
    R("run-data-nan", 2, ("nan", NONFINITE), lambda x: ["run", x.art(kind="loihi"), "--data", D(x, "nan"),
                                                         "--runtime", "sim"]),
    R("run-data-huge", 2, r"(?i)range|magnitude|1e\+30",
      lambda x: ["run", x.art(kind="loihi"), "--data", D(x, "huge"), "--runtime", "sim"]),
    R("run-data-wrong-size", 2, r"wrong_size",
      lambda x: ["run", x.art(kind="loihi"), "--data", D(x, "wrong_size"), "--runtime", "sim"]),
    # -- option values ----------------------------------------------------------------------------
    R("compile-limit-0", 2, r"limit", lambda x: ["compile", *M(x), "--data", fc.DATA, "--limit", "0", "-o", x.work / "o"]),
    R("profile-limit-0", 2, r"limit", lambda x: ["profile", *M(x), "--data", fc.DATA, "--limit", "0"]),
    R("verify-limit-negative", 2, r"limit", lambda x: ["verify", *M(x), "--data", fc.DATA, "--limit", "-5"]),
    R("simulate-limit-0", 2, r"limit", lambda x: simulate(x.art()) + ["--limit", "0"]),
    R("run-limit-0", 2, r"limit", lambda x: run(x.art(kind="loihi")) + ["--limit", "0"]),
    R("verify-spike-d-huge", 2, r"spike-d", lambda x: ["verify", *M(x), "--data", fc.DATA, "--spike-d", "1000000000000"]),
    R("verify-spike-d-contradicts-code", 2, r"(?i)spike-d|D ?=|contradict|override",
      lambda x: ["verify", *M(x), "--data", fc.DATA, "--limit", "4", "--spike-d", "8"]),
    R("verify-rounding-contradicts-code", 2, r"(?i)rounding|contradict|override",
      lambda x: ["verify", *M(x), "--data", fc.DATA, "--limit", "4", "--rounding", "floor"]),
    R("compile-norm-nan", 2, r"norm", lambda x: ["compile", *M(x), "--norm", "nan", "-o", x.work / "o"]),
    R("compile-norm-0", 2, r"norm", lambda x: ["compile", *M(x), "--norm", "0", "-o", x.work / "o"]),
    R("profile-e-mac-nan", 2, r"e-mac", lambda x: ["profile", *M(x), "--data", fc.DATA, "--e-mac", "nan"]),
    R("profile-e-ac-negative", 2, r"e-ac", lambda x: ["profile", *M(x), "--data", fc.DATA, "--e-ac", "-5"]),
    R("inspect-input-shape-negative", 2, r"input-shape",
      lambda x: ["inspect", *M(x), "--input-shape", "1,-8,8"]),
    R("inspect-input-shape-too-big", 2, r"(?i)memory|[GT]i?B|too large|cannot fit",
      lambda x: ["inspect", *M(x), "--input-shape", "1,100000,100000"]),
    R("compile-core-map-bad-json", 2, r"core-map", lambda x: ["compile", *M(x), "-t", "speck", "--core-map", "{bad",
                                                            "-o", x.work / "o"]),
    R("route-address-too-long", 2, r"address", lambda x: ["route", x.art(), "--layer", "0", "--address", "1,2,3,4"]),
    R("route-unknown-layer", 2, r"(?i)layer", lambda x: ["route", x.art(), "--layer", "99", "--address", "0,0,0"]),
    # -- -o onto folders that are not ours --------------------------------------------------------
    R("compile-o-foreign-folder", 2, FOREIGN, lambda x: ["compile", *M(x), "-o", x.c.user["foreign"]]),
    R("compile-o-model-folder", 2, CLASH,
      lambda x: ["compile", *M(x, x.c.user["model_dir"] / "digits_chain.pt",
                                f"{x.c.user['model_dir'] / 'digits_chain.py'}:build_model"),
                 "--data", x.c.user["model_dir"] / "digits_test.npz", "-o", x.c.user["model_dir"]]),
    R("compile-o-dot-in-model-folder", 2, CLASH,
      lambda x: ["compile", "digits_chain.pt", "--arch", "digits_chain.py:build_model", "-o", "."],
      cwd=lambda x: x.c.user["model_dir"]),
    R("compile-o-symlink-to-foreign", 2, FOREIGN, lambda x: ["compile", *M(x), "-o", _link(x.work / "link",
                                                                                     x.c.user["foreign"])]),
    R("profile-plot-below-a-file", 2, r"a_file\.txt.*is a file",
      lambda x: ["profile", *M(x), "--data", fc.DATA, "--limit", "3", "--plot", x.c.user["a_file"] / "p.png"]),
    R("compile-o-below-a-file", 2, r"a_file\.txt", lambda x: ["compile", *M(x), "-o", x.c.user["a_file"] / "out"]),
    # -- compiled artefacts: checked against manifest.json ---------------------------------------
    R("simulate-manifest-missing", 2, r"manifest\.json.*missing", lambda x: simulate(x.art("manifest_missing"))),
    R("simulate-manifest-not-json", 2, r"manifest\.json", lambda x: simulate(x.art("manifest_not_json"))),
    R("simulate-manifest-not-ours", 2, r"manifest\.json was not written by neurodeploy",
      lambda x: simulate(x.art("manifest_not_ours"))),
    R("simulate-graph-edited", 2, r"graph\.ir\.npz.*changed", lambda x: simulate(x.art("graph_weights_edited"))),
    R("simulate-sim-program-thresholds-edited", 2, r"sim_program\.json.*changed",
      lambda x: simulate(x.art("sim_program_thresholds_edited"))),
    R("route-routing-truncated", 2, r"routing\.npz.*changed", lambda x: route(x.art("routing_truncated"))),
    R("route-manifest-missing", 2, r"manifest\.json.*missing", lambda x: route(x.art("manifest_missing"))),
    R("run-net-weights-negated", 2, r"network\.net.*changed", lambda x: run(x.art("net_weights_negated"))),
    R("run-scale-q-edited", 2, r"loihi\.json.*changed", lambda x: run(x.art("sidecar_scale_q_edited"))),
    R("run-not-a-loihi-folder", 2, r"(?i)not a Loihi artefact", lambda x: run(x.art())),
    R("compile-over-previous-output", 0, (), lambda x: ["compile", *M(x), "-o", x.o(x.art())]),
    R("compile-force-next-to-user-files", 0, (), lambda x: ["compile", *M(x), "--force", "-o", x.o(_copy(
        x.c.user["foreign"], x.work / "mine"))]),
    R("simulate-good", 0, (), lambda x: simulate(x.art())),
    R("route-good", 0, (), lambda x: route(x.art())),
    R("run-good", 0, (), lambda x: run(x.art(kind="loihi"))),
    R("simulate-edited-no-verify-manifest", 0, r"--no-verify-manifest.*not checked",
      lambda x: simulate(x.art("sim_program_thresholds_edited"), NV)),
    # -- damaged artefacts the loaders must name (manifest refreshed, or --no-verify-manifest) -----
    R("simulate-nv-graph-unknown-field", 2, r"graph\.ir\.npz.*unknown field.*colour",
      lambda x: simulate(x.art("graph_unknown_field", nv=True), NV)),
    R("simulate-graph-unknown-field-refreshed-manifest", 2, r"graph\.ir\.npz.*unknown field.*colour",
      lambda x: simulate(x.art("graph_unknown_field", nv=True))),
    R("simulate-nv-graph-unknown-kind", 2, r"graph\.ir\.npz.*Teleporter",
      lambda x: simulate(x.art("graph_unknown_kind", nv=True), NV)),
    R("simulate-nv-graph-edge-to-nowhere", 2, r"graph\.ir\.npz.*ghost",
      lambda x: simulate(x.art("graph_edge_to_nowhere", nv=True), NV)),
    R("simulate-nv-graph-threshold-not-a-number", 2, r"graph\.ir\.npz.*threshold_q is 'big'",
      lambda x: simulate(x.art("graph_threshold_string", nv=True), NV)),
    R("simulate-nv-graph-truncated", 2, r"graph\.ir\.npz", lambda x: simulate(x.art("graph_truncated", nv=True), NV)),
    R("simulate-nv-graph-weight-shape", 2, r"graph\.ir\.npz.*shape",
      lambda x: simulate(x.art("graph_weights_edited", nv=True), NV)),
    R("simulate-sync-nv-graph-weight-shape", 2, r"graph\.ir\.npz.*shape",
      lambda x: simulate(x.art("graph_weights_edited", nv=True), NV, "--engine", "sync")),
    R("route-nv-routing-truncated", 2, r"routing\.npz", lambda x: route(x.art("routing_truncated", nv=True), NV)),
    R("route-nv-routing-schema-edited", 2, r"routing\.npz.*damaged",
      lambda x: route(x.art("routing_schema_edited", nv=True), NV)),
    R("simulate-nv-routing-schema-edited", 2, r"routing\.npz.*damaged",
      lambda x: simulate(x.art("routing_schema_edited", nv=True), NV)),
    R("run-nv-net-truncated", 2, r"network\.net", lambda x: run(x.art("net_truncated", nv=True), NV)),
    R("run-nv-net-weight-shape-sim", 2, r"network\.net.*weight shape",
      lambda x: run(x.art("net_weight_shape", nv=True), NV)),
    R("run-nv-net-weight-shape-lava", 2, r"network\.net.*weight shape",
      lambda x: run(x.art("net_weight_shape", nv=True), NV, runtime="lava")),
    R("run-nv-net-layer-broken", 2, r"network\.net", lambda x: run(x.art("net_layer_broken", nv=True), NV)),
    R("run-nv-sidecar-not-json", 2, r"loihi\.json.*JSON", lambda x: run(x.art("sidecar_not_json", nv=True), NV)),
    R("run-nv-sidecar-no-input", 2, r"loihi\.json.*'input'", lambda x: run(x.art("sidecar_no_input", nv=True), NV)),
    R("run-nv-sidecar-input-not-object", 2, r"loihi\.json.*'input'",
      lambda x: run(x.art("sidecar_input_not_object", nv=True), NV)),
    R("run-nv-sidecar-is-a-list", 2, r"loihi\.json", lambda x: run(x.art("sidecar_is_a_list", nv=True), NV)),
]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    compiled = {}
    for kind, extra in (("sim", ["--emit", "routing"]), ("loihi", ["-t", "loihi"])):
        res = CliRunner().invoke(main, [str(a) for a in ["compile", fc.CHAIN, "--arch", ARCH, "-o",
                                                         root / "compiled" / kind, *extra]])
        assert res.exit_code == 0, res.output
        compiled[kind] = root / "compiled" / kind
    return Corpus(root, fc.make_models(root / "models"), fc.make_data(root / "data"),
                  fc.make_user_folders(root / "user"), compiled)


def _ours(out: Path) -> set:
    """The files of a neurodeploy output folder: its manifest and the artefacts it lists."""
    if not (out / "manifest.json").is_file():
        return set()
    return {str(out / n) for n in [*json.loads((out / "manifest.json").read_text())["artefacts"], "manifest.json"]}


def _error_line(stderr: str) -> str:
    m = ERROR_LINE.search(stderr)
    return stderr[m.start():].splitlines()[0] if m else ""


@pytest.mark.parametrize("row", ROWS)
def test_fault(row: Row, corpus: Corpus, tmp_path, monkeypatch):
    art_dir = tmp_path / "art"
    art_dir.mkdir()
    made = iter(range(1000))

    def art(fault=None, nv=False, kind="sim"):
        if fault is None:
            dst = art_dir / f"{kind}_copy{next(made)}"
            shutil.copytree(corpus.compiled[kind], dst)
            return dst
        return fc.make_artifact(corpus.compiled, fault, art_dir / str(next(made)), refresh_manifest=nv)

    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(corpus, work, art)
    argv = [str(a) for a in row.argv(ctx)]
    monkeypatch.chdir(row.cwd(ctx) if row.cwd else work)
    watched = (corpus.root, art_dir, work)
    hashes_before = fc.hashes(*watched)
    ours_before = _ours(ctx.out) if ctx.out is not None else set()
    listings_before = [fc.listing(p) for p in watched]

    res = CliRunner().invoke(main, argv)

    text = res.output
    assert "Traceback (most recent call last)" not in text, text
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == row.status, f"exit {res.exit_code}, expected {row.status}:\n{text[-3000:]}"
    if row.status != 0:
        line = _error_line(res.stderr)
        assert line, f"no error line on stderr:\n{res.stderr[-2000:]}"
        for pattern in row.patterns:
            assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
        assert [fc.listing(p) for p in watched] == listings_before, "a failed command wrote or removed files"
    else:
        for pattern in row.patterns:
            assert re.search(pattern, res.stderr), f"{pattern!r} not in stderr {res.stderr!r}"
    hashes_after = fc.hashes(*watched)
    if ctx.out is not None and res.exit_code == 0:  # our artefacts in OUT were (re)written; nothing else
        ours = _ours(ctx.out) | ours_before
        hashes_before = {k: v for k, v in hashes_before.items() if k not in ours}
        hashes_after = {k: v for k, v in hashes_after.items() if k not in ours}
    assert hashes_after == hashes_before, "an input or artefact file was changed"
    left = [p for folder in watched for p in fc.listing(folder) if ".neurodeploy-" in p or p.endswith(".tmp")]
    assert not left, f"temp files left behind: {left}"


# -- the CLI's last resort, for what slips past every check -----------------------------------------

def _group_with(exc: BaseException) -> click.Group:
    from neurodeploy.cli import _Group

    @click.group(cls=_Group)
    def grp():
        pass

    @grp.command("boom")
    def boom():
        raise exc

    return grp


@pytest.mark.parametrize("exc, status, pattern", [
    (PermissionError(13, "Permission denied", "/data/out"), 2, r"^error: /data/out: Permission denied"),
    (FileNotFoundError(2, "No such file or directory", "/a", None, "/b"), 2, r"^error: /a -> /b: No such file"),
    (OSError(28, "No space left on device"), 2, r"^error: No space left on device"),
    (MemoryError(), 2, r"^error: out of memory"),
    (KeyboardInterrupt(), 130, r"^error: interrupted \(Ctrl-C\)"),
    (ZeroDivisionError("division by zero"), 3, r"^internal error: ZeroDivisionError: division by zero \(please "
                                               r"report this as a bug"),
    (KeyError("w"), 3, r"^internal error: KeyError: 'w'"),
])
def test_last_resort_errors(exc, status, pattern, monkeypatch):
    monkeypatch.delenv("NEURODEPLOY_DEBUG", raising=False)
    res = CliRunner().invoke(_group_with(exc), ["boom"])
    assert res.exit_code == status
    assert re.search(pattern, res.stderr), res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) <= 2


def test_debug_env_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("NEURODEPLOY_DEBUG", "1")
    res = CliRunner().invoke(_group_with(ZeroDivisionError("division by zero")), ["boom"])
    assert res.exit_code == 3
    assert "Traceback (most recent call last)" in res.stderr and "internal error:" in res.stderr


def test_usage_errors_stay_clicks(monkeypatch):
    res = CliRunner().invoke(_group_with(click.UsageError("bad option")), ["boom"])
    assert res.exit_code == 2 and "Error: bad option" in res.stderr

