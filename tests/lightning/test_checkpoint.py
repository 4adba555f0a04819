"""Safe checkpoint files: weights_only loading, refusals, atomic writes, generators from metadata."""

import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from flowgen.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    MissingMetadataError,
    UnsafeCheckpointError,
    atomic_save,
    build_module,
    capture_rng_state,
    check_plain,
    load_generator,
    make_metadata,
    module_spec,
    read_metadata,
    restore_rng_state,
    safe_load,
    to_plain,
)
from flowgen.nn import MLP
from flowgen.paths import DiscreteDDPM, RectifiedFlow


class _Payload:
    """Unpickling this would run ``os.system``."""

    def __reduce__(self):
        return (os.system, ("echo flowgen-test-should-never-run",))


class UserThing:
    """A custom class: not plain data."""

    def __init__(self):
        self.x = 1


def _generator_checkpoint(model, path=None, prediction="velocity"):
    meta = make_metadata(path=path or RectifiedFlow(), prediction=prediction,
                         model_spec={"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 16, "depth": 2}},
                         data_shape=(2,), weights_prefix="ema.", online_prefix="net.")
    state = OrderedDict()
    for k, v in model.state_dict().items():
        state["net." + k] = v + 1.0  # online weights differ from the EMA ones
        state["ema." + k] = v
    return {"state_dict": state, "flowgen": meta}


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("writer", ["torch_zip", "raw_pickle"])
def test_pickled_code_payload_is_refused_and_never_run(tmp_path, writer, capfd):
    f = tmp_path / "evil.ckpt"
    obj = {"state_dict": {}, "payload": _Payload()}
    if writer == "torch_zip":
        torch.save(obj, f)
    else:
        with open(f, "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="unsafe") as err:
        safe_load(f)
    assert "system" in str(err.value) and str(f) in str(err.value)
    assert isinstance(err.value, ValueError)
    assert "flowgen-test-should-never-run" not in capfd.readouterr().out


def test_custom_class_is_refused_with_its_name(tmp_path):
    f = tmp_path / "custom.ckpt"
    torch.save({"state_dict": {}, "thing": UserThing()}, f)
    with pytest.raises(UnsafeCheckpointError, match="UserThing"):
        safe_load(f)


def test_truncated_checkpoint_gives_clear_error_naming_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    atomic_save({"state_dict": {"w": torch.randn(1000)}}, good)
    raw = good.read_bytes()
    for name, content in [("trunc.ckpt", raw[: len(raw) // 2]), ("empty.ckpt", b""), ("garbage.ckpt", b"\x00not a checkpoint" * 20)]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CorruptCheckpointError) as err:
            safe_load(bad)
        assert str(bad) in str(err.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        safe_load("nope.ckpt")


# --------------------------------------------------------------------------- writes
def test_check_plain_names_the_offending_entry():
    check_plain({"a": [1, 2.0, "x", None, torch.zeros(2)], "b": OrderedDict(c=(torch.float32, torch.Size([2])))})
    with pytest.raises(TypeError, match=r"\['hyper_parameters'\]\['model'\].*UserThing"):
        check_plain({"hyper_parameters": {"model": UserThing()}})


def test_to_plain_converts_container_subclasses_and_numpy():
    from collections import namedtuple

    from lightning.fabric.utilities.data import AttributeDict

    NT = namedtuple("NT", "a b")
    out = to_plain({"h": AttributeDict(x=1), "n": NT(1, 2), "arr": np.arange(3), "s": np.float32(2.5)})
    check_plain(out)
    assert type(out["h"]) is dict and out["n"] == [1, 2] and out["s"] == 2.5
    assert torch.equal(out["arr"], torch.arange(3))


def test_atomic_save_keeps_previous_file_when_the_write_fails(tmp_path, monkeypatch):
    f = tmp_path / "last.ckpt"
    atomic_save({"step": 1, "w": torch.ones(3)}, f)

    def exploding_save(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2, "w": torch.zeros(3)}, f)
    monkeypatch.undo()
    assert safe_load(f)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_atomic_save_refuses_non_plain_objects_before_writing(tmp_path):
    f = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match="UserThing"):
        atomic_save({"thing": UserThing()}, f)
    assert not f.exists()


# --------------------------------------------------------------------------- generators
def test_load_generator_builds_the_model_with_ema_weights_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=2)
    f = tmp_path / "g.ckpt"
    atomic_save(_generator_checkpoint(model, DiscreteDDPM.linear(100), "v"), f)
    net, path, prediction, meta = load_generator(f)
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    for (k, a), (_, b) in zip(net.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(path, DiscreteDDPM) and path.num_steps == 100 and prediction.value == "v"
    assert meta["data_shape"] == [2]
    online = load_generator(f, weights="online").model
    torch.testing.assert_close(online.output.bias, model.output.bias + 1.0)


def test_checkpoint_without_path_metadata_says_so(tmp_path):
    f = tmp_path / "plain.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1)}}, f)
    with pytest.raises(MissingMetadataError, match="no flowgen metadata"):
        load_generator(f)
    ck = _generator_checkpoint(MLP(2, hidden=16, depth=2))
    ck["flowgen"]["path"] = None
    with pytest.raises(MissingMetadataError, match="lacks the path metadata"):
        read_metadata(ck)


def test_untrusted_or_non_module_classes_are_not_built():
    with pytest.raises(CheckpointError, match="not from a trusted module"):
        build_module({"class_path": "os.system", "init_args": {"command": "echo hi"}})
    with pytest.raises(CheckpointError, match="not from a trusted module"):
        build_module({"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}})
    with pytest.raises(CheckpointError, match="torch.nn.Module"):
        build_module({"class_path": "flowgen.paths.RectifiedFlow", "init_args": {}})
    with pytest.raises(CheckpointError, match="cannot import"):
        build_module({"class_path": "flowgen.nn.NoSuchNet", "init_args": {}})


def test_module_spec_round_trips_and_rejects_unrecoverable_models():
    m = MLP(3, hidden=24, depth=2, num_classes=4)
    spec = module_spec(m)
    rebuilt = build_module(spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}

    class Opaque(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.lin = torch.nn.Linear(width, width)  # 'width' is not stored: cannot be recovered

    assert module_spec(Opaque(5)) is None


def test_rng_state_round_trip_is_plain_and_exact():
    import random

    state = capture_rng_state()
    check_plain(state)
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_module_does_not_import_lightning():
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['lightning.pytorch'] = None; "
            "import flowgen.checkpoint, flowgen.viz; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_atomic_save_honours_the_umask_and_clears_temporaries_of_dead_writers(tmp_path):
    import os
    import stat
    import subprocess
    import sys

    from flowgen.checkpoint import atomic_save, safe_load

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".ck.pt.{dead_pid}.0badc0de.tmp"        # left by a writer killed mid-save
    live = tmp_path / f".ck.pt.{os.getppid()}.0badc0de.tmp"      # a writer that still runs: left alone
    other = tmp_path / f".other.pt.{dead_pid}.0badc0de.tmp"      # another destination's: left alone
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    old = os.umask(0o022)
    try:
        atomic_save({"x": 1}, tmp_path / "ck.pt")
    finally:
        os.umask(old)
    assert safe_load(tmp_path / "ck.pt") == {"x": 1}
    assert stat.S_IMODE(os.stat(tmp_path / "ck.pt").st_mode) == 0o644
    assert not stale.exists() and live.exists() and other.exists()
