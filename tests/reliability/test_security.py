"""Security: nothing untrusted is unpickled, no config string is evaluated.

* A static scan of the package: every ``torch.load`` passes ``weights_only=True``, every
  ``numpy.load`` ``allow_pickle=False``; no ``pickle.load(s)``, ``eval``, ``exec``, unsafe
  ``yaml.load``/``yaml.unsafe_load``, ``__import__`` or ``marshal``; ``importlib.import_module``
  only where a trusted-prefix check guards it.
* A file carrying a pickled code payload (its ``__reduce__`` would run ``os.system``) is refused
  with a clear message by every loader: :func:`flowgen.checkpoint.safe_load` and
  :func:`~flowgen.checkpoint.load_generator`, the Trainer's checkpoint plugin, the data-file
  loaders (``.pt``, and object arrays in ``.npy``/``.npz``), the reflow pair shards, the digits
  classifier cache, and the CLI's ``sample --ckpt``. The payload's marker file is never created.
* A checkpoint naming a model class outside the trusted modules is refused, not imported.
"""

from __future__ import annotations

import ast
import os
import pathlib
import warnings

import numpy as np
import pytest
import torch

import flowgen
from flowgen import checkpoint as ck

pytestmark = pytest.mark.filterwarnings("ignore")

PACKAGE = pathlib.Path(flowgen.__file__).resolve().parent


class Payload:
    """Pickles to a call of ``os.system("touch <marker>")``: harmless, but proof of execution if it ever runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "a pickled payload was executed"


def _payload_checkpoint(path, marker, **extra):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "flowgen": {"path": {"name": "RectifiedFlow", "sigma_min": 0.0}},
                "evil": Payload(marker), **extra}, path)
    return path


# --- static scan ---------------------------------------------------------------------------------------------
IMPORTLIB_ALLOWED = {
    "checkpoint.py",  # _resolve: trusted module prefixes only (TRUSTED_MODULE_PREFIXES, --trust-module)
    "cli.py",  # reference_data: 'flowgen.' data modules only
    "testing/__init__.py",  # lazy import of its own submodule
}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            yield node, owner, name


def _kw(node, key):
    for k in node.keywords:
        if k.arg == key:
            return k.value
    return None


def test_no_unsafe_deserialisation_or_evaluation_in_the_package():
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for f in files:
        rel = f.relative_to(PACKAGE).as_posix()
        tree = ast.parse(f.read_text(), filename=str(f))
        for node, owner, name in _calls(tree):
            where = f"{rel}:{node.lineno}"
            if owner == "torch" and name == "load":
                v = _kw(node, "weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("np", "numpy") and name == "load":
                v = _kw(node, "allow_pickle")
                if not (isinstance(v, ast.Constant) and v.value is False):
                    problems.append(f"{where}: numpy.load without allow_pickle=False")
            if owner in ("pickle", "cPickle", "dill", "marshal", "shelve") and name in ("load", "loads", "open", "Unpickler"):
                problems.append(f"{where}: {owner}.{name}")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec", "__import__", "compile"):
                problems.append(f"{where}: {name}()")
            if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
                loader = _kw(node, "Loader")
                if name != "load" or not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
                    problems.append(f"{where}: yaml.{name} without SafeLoader")
            if owner == "importlib" and name == "import_module" and rel not in IMPORTLIB_ALLOWED:
                problems.append(f"{where}: importlib.import_module outside the audited places {sorted(IMPORTLIB_ALLOWED)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("unsafe_load", "Unpickler"):
                problems.append(f"{rel}:{node.lineno}: reference to {node.attr}")
    assert not problems, "\n".join(problems)


def test_scan_sees_a_bad_call():
    """The scan itself: an unsafe torch.load, eval and pickle.loads are found."""
    tree = ast.parse("import torch, pickle\ntorch.load('x')\neval('1')\npickle.loads(b'')\ntorch.load('y', weights_only=True)\n")
    found = [(owner, name, bool(_kw(node, "weights_only"))) for node, owner, name in _calls(tree)]
    assert ("torch", "load", False) in found and (None, "eval", False) in found and ("pickle", "loads", False) in found
    assert ("torch", "load", True) in found


# --- every loader refuses a code payload ------------------------------------------------------------------------
def test_safe_load_refuses_a_code_payload(tmp_path, marker):
    f = _payload_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ck.UnsafeCheckpointError, match=r"refusing to load checkpoint .*evil\.ckpt.*(system|posix|os)"):
        ck.safe_load(f)
    with pytest.raises(ck.UnsafeCheckpointError):
        ck.load_generator(f)
    with pytest.raises(ck.UnsafeCheckpointError):
        ck.read_metadata(f)


class Custom:
    """A plain user object, no code in ``__reduce__``: still not plain data."""


def test_safe_load_refuses_a_custom_class(tmp_path, marker):
    torch.save({"state_dict": {}, "obj": Custom()}, tmp_path / "custom.ckpt")
    with pytest.raises(ck.UnsafeCheckpointError, match="Custom"):
        ck.safe_load(tmp_path / "custom.ckpt")


def test_lightning_checkpoint_plugin_refuses_a_code_payload(tmp_path, marker):
    from flowgen.lightning.checkpoint_io import SafeCheckpointIO

    f = _payload_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.raises(ck.UnsafeCheckpointError, match="refusing"):
        SafeCheckpointIO().load_checkpoint(f)


def test_untrusted_model_class_is_refused_not_imported(tmp_path):
    spec = {"class_path": "os.system", "init_args": {"command": "true"}}
    with pytest.raises(ck.CheckpointError, match="not from a trusted module"):
        ck.build_module(spec)
    spec = {"class_path": "flowgen.checkpoint.atomic_save", "init_args": {}}  # trusted module, but not a Module
    with pytest.raises(ck.CheckpointError, match="nn.Module"):
        ck.build_module(spec)


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".npz"])
def test_data_files_refuse_pickled_content(suffix, tmp_path, marker):
    from flowgen.data import load_tensor_file

    f = tmp_path / f"data{suffix}"
    if suffix == ".pt":
        torch.save({"data": torch.zeros(4, 2), "evil": Payload(marker)}, f)
    elif suffix == ".npy":
        np.save(f, np.array([Payload(marker), 1.0], dtype=object), allow_pickle=True)
    else:
        np.savez(f, data=np.array([Payload(marker), 1.0], dtype=object))
    with pytest.raises(ValueError, match=r"data\.(pt|npy|npz).*(unpickl|pickled|weights_only)"):
        load_tensor_file(f)


def _pairs(tmp_path):
    from flowgen.distill import generate_pairs

    class Teacher(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return -x

    return generate_pairs(Teacher(), flowgen.paths.RectifiedFlow(), num=6, batch_size=3, shape=(2,), out_dir=tmp_path / "pairs",
                          prediction="velocity", method="euler", steps=2, seed=0)


def test_reflow_shards_refuse_a_code_payload(tmp_path, marker):
    from flowgen.distill import PairDataset

    ds = _pairs(tmp_path)
    shard = tmp_path / "pairs" / "pairs_000001.pt"
    good = ds.noise.clone()
    torch.save({"noise": torch.zeros(3, 2), "endpoint": torch.zeros(3, 2), "evil": Payload(marker)}, shard)
    with pytest.raises(ValueError, match=r"shard 1 .*(unsafe|refusing).*rerun generate_pairs"):
        PairDataset(tmp_path / "pairs")
    # generate_pairs treats it as damaged and writes the shard again from its own seed (nothing executed)
    again = _pairs(tmp_path)
    assert again.generated == [1] and torch.equal(again.noise, good)


def test_classifier_cache_refuses_a_code_payload(tmp_path, marker, monkeypatch):
    from flowgen.metrics import classifier

    monkeypatch.setenv("FLOWGEN_CACHE", str(tmp_path / "cache"))
    path = classifier.digits_classifier_cache_path()
    path.parent.mkdir(parents=True)
    torch.save({"version": classifier.CACHE_VERSION, "config": {}, "state_dict": {}, "evil": Payload(marker)}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert classifier._load_cache(path) is None  # refused: the caller retrains and rewrites the cache
    assert any("unreadable" in str(w.message) and "digits_classifier" in str(w.message) for w in caught)


def test_cli_sample_refuses_a_code_payload(tmp_path, marker, capsys):
    from flowgen.cli import main

    f = _payload_checkpoint(tmp_path / "evil.ckpt", marker)
    code = main(["sample", "--ckpt", str(f), "--num", "4", "--out", str(tmp_path / "s.npy"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "evil.ckpt" in err and ("unsafe" in err or "refusing" in err), err
    assert "Traceback" not in err
    assert not (tmp_path / "s.npy").exists()


# --- corrupted and truncated checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "flipped"])
def test_damaged_checkpoints_give_a_clear_error(damage, tmp_path):
    f = tmp_path / "model.ckpt"
    ck.atomic_save({"state_dict": {"w": torch.randn(256, 256)}, "flowgen": {"format": 1}}, f)
    raw = f.read_bytes()
    if damage == "truncated":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        f.write_bytes(os.urandom(4096))
    elif damage == "empty":
        f.write_bytes(b"")
    else:  # a flipped byte inside the pickle stream
        i = raw.find(b"data.pkl") + 200
        f.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    try:
        ck.safe_load(f)
    except ck.CheckpointError as err:
        msg = str(err)
        assert "model.ckpt" in msg and ("corrupt" in msg or "truncated" in msg or "unsafe" in msg), msg
        assert "\n" not in msg.strip()
    else:  # a flip inside tensor bytes keeps the file loadable: then the values changed, nothing else
        assert damage == "flipped"


def test_distillation_teacher_loading_refuses_a_code_payload(tmp_path, marker):
    from flowgen.lightning.distill import (
        ConsistencyModule,
        ProgressiveDistillModule,
        ReflowModule,
    )

    f = _payload_checkpoint(tmp_path / "teacher.ckpt", marker)
    for make in (lambda: ProgressiveDistillModule(str(f), student_steps=2, steps_per_round=1),
                 lambda: ConsistencyModule(str(f)), lambda: ReflowModule(str(f))):
        with pytest.raises(ck.CheckpointError, match=r"teacher\.ckpt.*(unsafe|refusing)"):
            make()


def test_cli_distill_teacher_refuses_a_code_payload(tmp_path, marker, capsys):
    from flowgen.cli import main

    f = _payload_checkpoint(tmp_path / "teacher.ckpt", marker)
    recipe = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "distill" / "progressive_moons.yaml"
    code = main(["distill", "--config", str(recipe), "--teacher", str(f), "--trainer.max_steps", "1",
                 "--trainer.default_root_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "teacher.ckpt" in err and ("unsafe" in err or "refusing" in err), err
    assert "Traceback" not in err


def test_fit_ckpt_path_refuses_hyper_parameters_naming_an_untrusted_class(tmp_path, capsys):
    """LightningCLI turns a checkpoint's hyper-parameters into config and imports every class_path in it."""
    import sys

    from flowgen.cli import main

    recipe = str(pathlib.Path(__file__).resolve().parents[2] / "recipes" / "rf_moons.yaml")
    common = ["fit", "--config", recipe, "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
              "--trainer.limit_val_batches", "0", "--data.init_args.batch_size", "8"]
    assert main(common + ["--trainer.max_steps", "2"]) == 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert main(common + ["--trainer.max_steps", "3", "--ckpt_path", str(last)]) == 0  # flowgen's own classes resume
    capsys.readouterr()
    ckpt["hyper_parameters"]["model"]["class_path"] = "evil_flowgen_plugin.Net"
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    assert main(common + ["--trainer.max_steps", "4", "--ckpt_path", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "evil_flowgen_plugin.Net" in err and "trusted" in err
    assert "evil_flowgen_plugin" not in sys.modules


def test_ckpt_class_paths_named_whole_by_the_users_config_are_trusted(tmp_path):
    from flowgen.cli import _check_ckpt_class_paths

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  class_path: mypkg.nets.Net\n")
    ckpt = {"hyper_parameters": {"model": {"class_path": "mypkg.nets.Net"}, "opt": {"class_path": "torch.optim.Adam"}}}
    _check_ckpt_class_paths(ckpt, ["fit", "--config", str(cfg)], "x.ckpt")  # named in the config: accepted
    for fragment in ("mypkg.nets", "nets.Net"):  # a fragment of a named class is not the class
        with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
            _check_ckpt_class_paths({"hyper_parameters": {"m": {"class_path": fragment}}}, ["fit", "--config", str(cfg)], "x.ckpt")
