"""Hypothesis-driven fuzz of flowgen's public API: every call works or is refused clearly.

Each hypothesis example draws a configuration (path family, two predictions, batch size, event
shape, float dtype, seed) and, for one area of the library, builds valid calls of every public
callable there (:mod:`_rel_apis`). Each call is then run unchanged and with one argument corrupted at
a time — malformed shapes, int/bool/complex/float16/bfloat16/float64 dtypes, another device
("meta" here, CUDA when present), out-of-range and NaN/Inf ``t``, NaN/Inf data, empty batches,
unknown names, wrong types, broken models — and with whole-call corruptions (every tensor empty,
in another float dtype, or on another device).

The law (:func:`_rel_harness.run_case`): the call returns a finite result of the right shape and
dtype, or raises ValueError/TypeError whose message names the argument; never another exception
type, never a silent NaN/Inf, never a hang (per-case timer). Documented exceptions are explicit
in the specs: derivatives may be infinite outside ``[t_min, t_max]``, ``log_snr`` is ±inf at the
ends, and networks (and losses that call them) pass a non-finite *network output* through, which
the training loop stops on (naming the step) or skips.

Each test counts its cases, prints the count, records it with ``record_property`` and asserts a
minimum; the session summary lists the totals per area.
"""

from __future__ import annotations

import _rel_apis as A
import _rel_harness as H
import _rel_specs as S
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowgen import samplers as fs

pytestmark = pytest.mark.filterwarnings("ignore")


def configs(path_names=None, dtypes=(torch.float32, torch.float64)):
    names = sorted(A.PATH_FACTORIES) if path_names is None else list(path_names)
    return st.builds(
        A.Config,
        path_name=st.sampled_from(names),
        prediction=st.sampled_from(A.PREDICTIONS),
        other=st.sampled_from(A.PREDICTIONS),
        batch=st.integers(1, 3),
        event=st.sampled_from(A.EVENT_SHAPES),
        dtype=st.sampled_from(list(dtypes)),
        seed=st.integers(0, 2**16),
    )


def _run(api: S.Api, case: S.Case):
    try:
        outcome = H.run_case(api.area, case.label, case.fn, names=case.names, check=case.check,
                             allow_nonfinite=case.allow_nonfinite, timeout=api.timeout)
    except H.CaseFailure as err:
        raise AssertionError(f"{err}\n  configuration: {CURRENT[0]}") from None
    return outcome, H.LAST_REFUSAL[0]


CURRENT = [None]


def fuzz(apis) -> int:
    n = 0
    for api in apis:
        n += S.run_api(api, _run)
    return n


class Counter:
    """Counts the cases of one test (hypothesis runs the body many times) and checks a floor."""

    def __init__(self, record_property, name: str, minimum: int):
        self.record, self.name, self.minimum, self.n = record_property, name, minimum, 0

    def add(self, k: int) -> None:
        self.n += k

    def done(self) -> None:
        print(f"{self.name}: {self.n} fuzz cases")
        self.record(f"fuzz_cases_{self.name}", self.n)
        assert self.n >= self.minimum, f"{self.name} ran only {self.n} fuzz cases, expected at least {self.minimum}"


def fuzz_settings(max_examples: int) -> settings:
    """The loaded profile (ci: derandomized) with this test's number of configurations; each runs hundreds of cases."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


# --- paths -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path_name", sorted(A.PATH_FACTORIES))
def test_fuzz_paths(path_name, record_property):
    """Every built-in path: alpha/sigma/derivatives/log_snr/coefficients/t_from_log_snr/sample/config."""
    count = Counter(record_property, f"paths[{path_name}]", minimum=300)

    @fuzz_settings(4)
    @given(cfg=configs([path_name], dtypes=(torch.float32, torch.float64)))
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.path_apis(cfg)))
        for label, fn, names in A.path_config_cases(cfg):
            _run(S.Api("paths", "path_from_config", fn, {}), S.Case(f"path_from_config({label})", fn, names, None))
            count.add(1)

    body()
    count.done()


# --- parameterization and objectives -----------------------------------------------------------------------------
def test_fuzz_parameterization(record_property):
    """convert / to_data_noise / from_data_noise / singular_at / prediction_error_scale, every path and pair."""
    count = Counter(record_property, "parameterization", minimum=2000)

    @fuzz_settings(24)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.parameterization_apis(cfg)))

    body()
    count.done()


def test_fuzz_objectives(record_property):
    """prediction_loss (all weightings), prediction_target, Objective (times, couplings), presets, time draws."""
    count = Counter(record_property, "objectives", minimum=3000)

    @fuzz_settings(8)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.objective_apis(cfg)))

    body()
    count.done()


def test_fuzz_preconditioning(record_property):
    """edm/consistency coefficients and the EDMPreconditioned / BoundaryConditioned wrappers."""
    count = Counter(record_property, "preconditioning", minimum=600)

    @fuzz_settings(6)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.preconditioning_apis(cfg)))

    body()
    count.done()


# --- samplers ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", A.ALL_METHODS)
def test_fuzz_samplers(method, record_property):
    """sample / integrate / invert / sample_stream / step / log_likelihood with every method."""
    count = Counter(record_property, f"samplers[{method}]", minimum=150)

    @fuzz_settings(2)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = (cfg, method)
        count.add(fuzz(A.sampler_apis(cfg, method)))

    body()
    count.done()


def test_fuzz_grids(record_property):
    """Time grids, grid checks and seeded noise, including malformed explicit grids given to sample()."""
    count = Counter(record_property, "grids", minimum=300)

    @fuzz_settings(5)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.grid_apis(cfg)))
        for label, fn, names in A.grid_value_cases(cfg):
            _run(S.Api("samplers", label, fn, {}), S.Case(label, fn, names, None))
            count.add(1)

    body()
    count.done()


def test_fuzz_unknown_method_names(record_property):
    """Unknown or mistyped names for every name-taking argument are refused naming the argument."""
    count = Counter(record_property, "names", minimum=40)
    path = A.PATH_FACTORIES["Cosine"]()
    noise = torch.randn(2, 2)
    model = A.LinearModel()
    calls = {
        "method": lambda v: fs.sample(model, path, noise, prediction="velocity", method=v, steps=2),
        "prediction": lambda v: fs.sample(model, path, noise, prediction=v, steps=2),
        "grid": lambda v: fs.sample(model, path, noise, prediction="velocity", grid=v, steps=2),
        "divergence": lambda v: fs.log_likelihood(model, path, noise, prediction="velocity", divergence=v, t_max=0.9, t_min=0.1),
        "weighting": lambda v: A.fo.prediction_loss(noise, data=noise, noise=noise, t=torch.full((2,), 0.5), path=path,
                                                    prediction="noise", weighting=v),
        "metric": lambda v: A.fo.prediction_loss(noise, data=noise, noise=noise, t=torch.full((2,), 0.5), path=path,
                                                 prediction="noise", metric=v),
        "time": lambda v: A.fo.Objective(path, "velocity", time=v),
        "coupling": lambda v: A.fo.Objective(path, "velocity", coupling=v),
        "solver": lambda v: A.fd.teacher_ode_step(model, path, "velocity", solver=v),
        "kernel": lambda v: A.fm.mmd(noise, noise, kernel=v),
    }
    for arg, call in calls.items():
        for label, bad in S.NAME_CORRUPTIONS + [("typo", "veloctiy"), ("upper_unknown", "EULERR"), ("list", ["euler"])]:
            H.run_case("names", f"{arg}={label}", lambda: call(bad), names=(arg, "name"))
            count.add(1)
    count.done()


# --- distillation, networks, metrics ----------------------------------------------------------------------------
def test_fuzz_distill(record_property):
    """Progressive / consistency / reflow / one-step losses, teacher steps, generators, loss objects."""
    count = Counter(record_property, "distill", minimum=3000)

    @fuzz_settings(8)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.distill_apis(cfg)))

    body()
    count.done()


def test_fuzz_nn(record_property):
    """MLP, UNet and DiT forward passes (dtype/device/shape/label checks)."""
    count = Counter(record_property, "nn", minimum=400)

    @fuzz_settings(5)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.nn_apis(cfg)))

    body()
    count.done()


def test_fuzz_metrics(record_property):
    """W2, MMD, Fréchet distance, log-likelihood under a known density, Gaussian statistics."""
    count = Counter(record_property, "metrics", minimum=1000)

    @fuzz_settings(8)
    @given(cfg=configs())
    def body(cfg):
        CURRENT[0] = cfg
        count.add(fuzz(A.metrics_apis(cfg)))

    body()
    count.done()


def test_harness_catches_what_it_should():
    """The harness itself: a silent NaN, a foreign exception, an unnamed refusal and a hang all fail."""
    with pytest.raises(H.CaseFailure, match="non-finite"):
        H.run_case("self", "nan", lambda: torch.tensor([float("nan")]), names=("x",))
    with pytest.raises(H.CaseFailure, match="IndexError"):
        H.run_case("self", "index", lambda: [][1], names=("x",))
    with pytest.raises(H.CaseFailure, match="does not name"):
        H.run_case("self", "unnamed", lambda: (_ for _ in ()).throw(ValueError("bad value for max_t")), names=("t",))
    with pytest.raises(H.CaseFailure, match="no answer"):
        H.run_case("self", "hang", lambda: __import__("time").sleep(5), names=("x",), timeout=0.2)
    assert H.run_case("self", "named", lambda: (_ for _ in ()).throw(TypeError("t must be a tensor")), names=("t",)) == "refused"
    assert H.run_case("self", "ok", lambda: torch.ones(2), names=(), check=H.tensor_like((2,), (torch.float32,))) == "ok"
