"""The public API under fuzz: one :class:`~_specs.Api` per callable, built for a drawn configuration.

A configuration is a path, two predictions, a batch size, an event shape, a float dtype and a seed;
each builder returns valid calls of one area of flowgen, and :func:`_specs.cases` corrupts them.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from _rel_specs import (
    BATCH,
    FIXED,
    MODEL,
    NAME,
    PATH,
    POS_FLOAT,
    POS_INT,
    TIME,
    Api,
    Arg,
)
from torch import Tensor, nn

import flowgen
from flowgen import Prediction
from flowgen import distill as fd
from flowgen import metrics as fm
from flowgen import objectives as fo
from flowgen import preconditioning as fp
from flowgen import samplers as fs
from flowgen.parameterization import prediction_error_scale, singular_at
from flowgen.paths import (
    EDM,
    VP,
    Cosine,
    DiscreteDDPM,
    Path,
    RectifiedFlow,
    path_from_config,
)

#: every built-in path family (small DDPM tables keep the fuzz fast; the table code is the same).
PATH_FACTORIES = {
    "RectifiedFlow": lambda: RectifiedFlow(),
    "RectifiedFlow(sigma_min)": lambda: RectifiedFlow(sigma_min=0.01),
    "Cosine": lambda: Cosine(),
    "VP": lambda: VP(),
    "EDM": lambda: EDM(),
    "DiscreteDDPM.linear": lambda: DiscreteDDPM.linear(num_steps=50),
    "DiscreteDDPM.cosine": lambda: DiscreteDDPM.cosine(num_steps=50),
    "DiscreteDDPM.scaled_linear": lambda: DiscreteDDPM.scaled_linear(num_steps=50),
}
PREDICTIONS = list(Prediction)
EVENT_SHAPES = [(2,), (1, 3), (2, 2, 2)]
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass
class Config:
    path_name: str
    prediction: Prediction
    other: Prediction
    batch: int
    event: tuple
    dtype: torch.dtype
    seed: int

    @property
    def path(self) -> Path:
        return PATH_FACTORIES[self.path_name]()

    @property
    def shape(self) -> tuple:
        return (self.batch, *self.event)

    def gen(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def data(self, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(self.shape, generator=self.gen(), dtype=torch.float64)).to(self.dtype)

    def noise(self) -> Tensor:
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(self.seed + 1), dtype=torch.float64).to(self.dtype)

    def inner_t(self) -> Tensor:
        """Times strictly inside the path's generation interval (nothing singular there)."""
        p = self.path
        lo, hi = p.t_min, p.t_max
        lo, hi = lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo)
        u = torch.rand(self.batch, generator=torch.Generator().manual_seed(self.seed + 2), dtype=torch.float64)
        return (lo + (hi - lo) * u).to(self.dtype)

    def __repr__(self):
        return (f"Config({self.path_name}, {self.prediction.value}->{self.other.value}, shape={self.shape}, "
                f"{str(self.dtype).replace('torch.', '')}, seed={self.seed})")


# --- helpers ---------------------------------------------------------------------------------------------
def _coef_dtype(*xs) -> tuple[torch.dtype, ...]:
    """float64 when any input is float64, else float32 (flowgen's coefficient dtype)."""
    return (torch.float64,) if any(isinstance(x, Tensor) and x.dtype == torch.float64 for x in xs) else (torch.float32,)


def _is_float_tensor(x) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()


def _tensor_check(shape_of: str, dtype_of: str | None = None, *, dtypes=None):
    """Result check factory: a tensor of ``kw[shape_of]``'s shape and ``kw[dtype_of]``'s dtype (or ``dtypes(kw)``)."""

    def factory(kw):
        ref = kw.get(shape_of)
        if not isinstance(ref, Tensor):
            return None

        def check(out):
            assert isinstance(out, Tensor), f"expected a Tensor, got {type(out).__name__}"
            assert out.shape == ref.shape, f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
            if dtypes is not None:
                allowed = dtypes(kw)
            elif dtype_of is not None and isinstance(kw.get(dtype_of), Tensor):
                allowed = (kw[dtype_of].dtype,)
            else:
                allowed = None
            if allowed is not None:
                assert out.dtype in allowed, f"dtype {out.dtype}, expected one of {allowed}"

        return check

    return factory


def _per_sample_check(ref_key: str, *, dtypes=None):
    def factory(kw):
        ref = kw.get(ref_key)
        if not isinstance(ref, Tensor) or ref.dim() == 0:
            return None

        def check(out):
            assert isinstance(out, Tensor), f"expected a Tensor, got {type(out).__name__}"
            assert out.shape == (ref.shape[0],), f"shape {tuple(out.shape)}, expected ({ref.shape[0]},)"
            if dtypes is not None:
                assert out.dtype in dtypes(kw), f"dtype {out.dtype}, expected one of {dtypes(kw)}"

        return check

    return factory


def _cpu_float(x) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point() and x.device.type == "cpu"


def _outside(t, path: Path) -> bool:
    """Whether some of ``t`` lies outside the path's ``[t_min, t_max]`` (where derivatives may be infinite)."""
    if not _cpu_float(t):
        return False
    t64 = t.detach().double()
    return bool(((t64 < path.t_min) | (t64 > path.t_max)).any())


class LinearModel(nn.Module):
    """A finite, cheap model for every prediction kind: ``-c·x_t`` (shape and dtype of ``x_t``)."""

    def __init__(self, c: float = 0.5):
        super().__init__()
        self.c = c
        self.calls = 0

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        return -self.c * x_t


# --- paths ------------------------------------------------------------------------------------------------
def path_apis(cfg: Config) -> list[Api]:
    path = cfg.path
    t = cfg.inner_t()
    apis = []

    def outside_interval(kw):
        tt = kw.get("t")

        def allow(out):
            # documented: derivatives may be infinite outside [t_min, t_max] (e.g. σ'(0) on VP and DDPM)
            if not isinstance(tt, Tensor) or not isinstance(out, Tensor) or tt.shape != out.shape:
                return False
            t64 = tt.detach().to(torch.float64)
            bad = ~torch.isfinite(out)
            return bool(((t64[bad] < path.t_min) | (t64[bad] > path.t_max)).all())

        return allow

    def log_snr_ends(kw):
        tt = kw.get("t")

        def allow(out):
            # documented: λ = +inf where σ = 0 and -inf where α = 0 (only at the ends)
            if not isinstance(tt, Tensor) or not isinstance(out, Tensor) or tt.shape != out.shape:
                return False
            t64 = tt.detach().to(torch.float64)
            a, s = path._alpha(t64), path._sigma(t64)
            bad = ~torch.isfinite(out)
            return not bool(torch.isnan(out).any()) and bool(((a[bad] == 0) | (s[bad] == 0)).all())

        return allow

    time_check = _per_sample_check("t", dtypes=lambda kw: _coef_dtype(kw.get("t")))
    for method in ("alpha", "sigma"):
        apis.append(Api("paths", f"{cfg.path_name}.{method}", getattr(path, method), {"t": Arg(TIME, t)}, time_check))
    for method in ("d_alpha", "d_sigma"):
        apis.append(Api("paths", f"{cfg.path_name}.{method}", getattr(path, method), {"t": Arg(TIME, t)}, time_check,
                        allow_nonfinite=outside_interval))
    apis.append(Api("paths", f"{cfg.path_name}.log_snr", path.log_snr, {"t": Arg(TIME, t)}, time_check, allow_nonfinite=log_snr_ends))
    apis.append(Api("paths", f"{cfg.path_name}.coefficients", lambda t: torch.stack(path.coefficients(t)), {"t": Arg(TIME, t)},
                    allow_nonfinite=lambda kw: lambda out: _outside(kw.get("t"), path)))
    lam = path.log_snr(t.to(torch.float64)).to(torch.float32 if cfg.dtype != torch.float64 else torch.float64)
    apis.append(Api("paths", f"{cfg.path_name}.t_from_log_snr", lambda log_snr: path.t_from_log_snr(log_snr),
                    {"log_snr": Arg(TIME, lam)}, _per_sample_check("log_snr"), skip=("t_below_0", "t_above_1", "t_all_0", "t_all_1")))

    def sample(data, noise, t):
        s = path.sample(data=data, noise=noise, t=t)
        return s.x_t, s.velocity

    def sample_check(kw):
        d = kw.get("data")
        if not isinstance(d, Tensor):
            return None

        def check(out):
            for o in out:
                assert o.shape == d.shape and o.dtype == d.dtype, f"got {tuple(o.shape)} {o.dtype}, expected {tuple(d.shape)} {d.dtype}"

        return check

    apis.append(Api("paths", f"{cfg.path_name}.sample", sample,
                    {"data": Arg(BATCH, cfg.data()), "noise": Arg(BATCH, cfg.noise()), "t": Arg(TIME, t)}, sample_check))

    def from_config(cfg_dict):
        return path_from_config(cfg_dict).alpha(torch.tensor([0.5]))

    apis.append(Api("paths", "path_from_config", from_config,
                    {"cfg_dict": Arg(FIXED, flowgen.paths.path_to_config(path), names=("path", "config"))}))
    return apis


def path_config_cases(cfg: Config):
    """Malformed path configs: unknown names, wrong argument names and types, non-dicts."""
    good = flowgen.paths.path_to_config(cfg.path)
    bad = [
        ("unknown_name", {**good, "name": "NoSuchPath"}),
        ("missing_name", {k: v for k, v in good.items() if k != "name"}),
        ("extra_key", {**good, "bogus": 1}),
        ("not_a_dict", "RectifiedFlow"),
        ("none", None),
        ("name_int", {**good, "name": 3}),
    ]
    for k, v in good.items():
        if k == "name":
            continue
        bad += [(f"{k}=string", {**good, k: "abc"}), (f"{k}=none", {**good, k: None}), (f"{k}=nan", {**good, k: float("nan")}),
                (f"{k}=negative", {**good, k: -1 if not isinstance(v, list) else [-0.1] * 3})]
    if good["name"] == "DiscreteDDPM" and "schedule" in good:
        bad.append(("unknown_schedule", {**good, "schedule": "quadratic"}))
    for label, c in bad:
        yield label, (lambda c=c: path_from_config(c).alpha(torch.tensor([0.5]))), ("path", "config", "name", *map(str, good))


# --- parameterization -------------------------------------------------------------------------------------
def parameterization_apis(cfg: Config) -> list[Api]:
    path = cfg.path
    t = cfg.inner_t()
    x_t = cfg.data()
    pred = cfg.noise()
    src, dst = cfg.prediction.value, cfg.other.value
    apis = [
        Api("parameterization", "convert", lambda pred, src, dst, x_t, t, path: flowgen.convert(pred, src=src, dst=dst, x_t=x_t, t=t, path=path),
            {"pred": Arg(BATCH, pred), "src": Arg(NAME, src), "dst": Arg(NAME, dst), "x_t": Arg(BATCH, x_t), "t": Arg(TIME, t),
             "path": Arg(PATH, path)},
            _tensor_check("pred", "pred")),
        Api("parameterization", "to_data_noise",
            lambda pred, src, x_t, t, path: flowgen.to_data_noise(pred, src=src, x_t=x_t, t=t, path=path),
            {"pred": Arg(BATCH, pred), "src": Arg(NAME, src), "x_t": Arg(BATCH, x_t), "t": Arg(TIME, t), "path": Arg(PATH, path)}),
        Api("parameterization", "from_data_noise",
            lambda data, noise, dst, t, path: flowgen.from_data_noise(data=data, noise=noise, dst=dst, t=t, path=path),
            {"data": Arg(BATCH, x_t), "noise": Arg(BATCH, pred), "dst": Arg(NAME, dst), "t": Arg(TIME, t), "path": Arg(PATH, path)},
            _tensor_check("data", "data")),
        Api("parameterization", "singular_at", lambda path, t, src, dst: singular_at(path, t, src=src, dst=dst).float(),
            {"path": Arg(PATH, path), "t": Arg(TIME, t), "src": Arg(NAME, src), "dst": Arg(NAME, dst)},
            _per_sample_check("t")),
        Api("parameterization", "prediction_error_scale", lambda path, t, prediction: prediction_error_scale(path, t, prediction),
            {"path": Arg(PATH, path), "t": Arg(TIME, t), "prediction": Arg(NAME, src)},
            _per_sample_check("t"),
            # k_P(t)² is infinite where σ = 0 for the noise/velocity/v/score errors (documented in the weightings)
            allow_nonfinite=lambda kw: lambda out: _cpu_float(kw.get("t")) and bool((path._sigma(kw["t"].detach().double()) == 0).any())),
    ]
    return apis


# --- objectives ---------------------------------------------------------------------------------------------
def objective_apis(cfg: Config) -> list[Api]:
    path = cfg.path
    t = cfg.inner_t()
    data, noise = cfg.data(), cfg.noise()
    pred = cfg.data(0.5)
    apis = [
        Api("objectives", "prediction_loss",
            lambda pred, data, noise, t, path, prediction, weighting, metric: fo.prediction_loss(
                pred, data=data, noise=noise, t=t, path=path, prediction=prediction, weighting=weighting, metric=metric),
            {"pred": Arg(BATCH, pred), "data": Arg(BATCH, data), "noise": Arg(BATCH, noise), "t": Arg(TIME, t), "path": Arg(PATH, path),
             "prediction": Arg(NAME, cfg.prediction.value), "weighting": Arg(NAME, "uniform"), "metric": Arg(NAME, "l2")},
            _per_sample_check("data")),
        Api("objectives", "prediction_target",
            lambda data, noise, t, path, prediction: fo.prediction_target(data=data, noise=noise, t=t, path=path, prediction=prediction),
            {"data": Arg(BATCH, data), "noise": Arg(BATCH, noise), "t": Arg(TIME, t), "path": Arg(PATH, path),
             "prediction": Arg(NAME, cfg.prediction.value)},
            _tensor_check("data", "data")),
    ]
    for w in ("snr", "min_snr", "edm"):
        apis.append(Api("objectives", f"prediction_loss[{w}]",
                        lambda pred, data, noise, t, w=w: fo.prediction_loss(pred, data=data, noise=noise, t=t, path=path,
                                                                            prediction=cfg.prediction, weighting=w),
                        {"pred": Arg(BATCH, pred), "data": Arg(BATCH, data), "noise": Arg(BATCH, noise), "t": Arg(TIME, t)},
                        _per_sample_check("data")))
    model = LinearModel()

    def objective_call(path, prediction, time, weighting, coupling, metric, data):
        obj = fo.Objective(path, prediction, time=time, weighting=weighting, coupling=coupling, metric=metric)
        return obj(model, data, generator=torch.Generator().manual_seed(0))

    def scalar_check(kw):
        def check(out):
            assert isinstance(out, Tensor) and out.dim() == 0, f"expected a scalar tensor, got {out!r}"
        return check

    apis.append(Api("objectives", "Objective", objective_call,
                    {"path": Arg(PATH, path), "prediction": Arg(NAME, cfg.prediction.value), "time": Arg(NAME, "uniform"),
                     "weighting": Arg(NAME, "uniform"), "coupling": Arg(NAME, "independent"), "metric": Arg(NAME, "l2"),
                     "data": Arg(BATCH, data)},
                    scalar_check))
    for tname in ("logit_normal", "log_normal_sigma"):
        apis.append(Api("objectives", f"Objective[{tname}]",
                        lambda data, tname=tname: fo.Objective(path, cfg.prediction, time=tname)(model, data, generator=torch.Generator().manual_seed(1)),
                        {"data": Arg(BATCH, data)}, scalar_check))
    for coupling in ("ot", "sinkhorn"):
        apis.append(Api("objectives", f"Objective[{coupling}]",
                        lambda data, coupling=coupling: fo.Objective(path, cfg.prediction, coupling=coupling)(model, data, generator=torch.Generator().manual_seed(2)),
                        {"data": Arg(BATCH, data)}, scalar_check))
    apis.append(Api("objectives", "presets.ddpm",
                    lambda prediction, data: fo.ddpm(DiscreteDDPM.linear(num_steps=50), prediction)(model, data),
                    {"prediction": Arg(NAME, "noise"), "data": Arg(BATCH, data)}, scalar_check))
    apis.append(Api("objectives", "presets.flow_matching",
                    lambda coupling, sigma_min, data: fo.flow_matching(coupling=coupling, sigma_min=sigma_min)(model, data),
                    {"coupling": Arg(NAME, "ot"), "sigma_min": Arg(POS_FLOAT, 0.01), "data": Arg(BATCH, data)}, scalar_check,
                    skip=("float_none",)))
    apis.append(Api("objectives", "presets.edm", lambda sigma_data, data: fo.edm(sigma_data=sigma_data)(model, data),
                    {"sigma_data": Arg(POS_FLOAT, 0.5), "data": Arg(BATCH, data)}, scalar_check, skip=("float_none",)))
    apis.append(Api("objectives", "presets.rectified_flow", lambda time, data: fo.rectified_flow(time=time)(model, data),
                    {"time": Arg(NAME, "logit_normal"), "data": Arg(BATCH, data)}, scalar_check))

    def draw_time(name, batch):
        return fo.objective.get_time_distribution(name).sample(batch, path=path, generator=torch.Generator().manual_seed(0))

    def in_interval(kw):
        def check(out):
            assert out.dim() == 1 and bool(((out >= path.t_min) & (out <= path.t_max)).all()), f"times outside [t_min, t_max]: {out}"
        return check

    apis.append(Api("objectives", "TimeDistribution.sample", draw_time,
                    {"name": Arg(NAME, "uniform", names=("time",)), "batch": Arg(POS_INT, cfg.batch)}, in_interval,
                    skip=("int_zero",)))
    return apis


# --- preconditioning ------------------------------------------------------------------------------------------
def preconditioning_apis(cfg: Config) -> list[Api]:
    path = cfg.path
    t = cfg.inner_t()
    x_t = cfg.data()
    net = LinearModel()
    stack = lambda f: (lambda **kw: torch.stack(f(**kw)))
    apis = [
        Api("preconditioning", "edm_coefficients", stack(lambda t, sigma_data: fp.edm_coefficients(path, t, sigma_data=sigma_data)),
            {"t": Arg(TIME, t), "sigma_data": Arg(POS_FLOAT, 0.5)}, skip=("float_none",)),
        Api("preconditioning", "consistency_coefficients",
            stack(lambda t, t_min, sigma_data: fp.consistency_coefficients(path, t, t_min=t_min, sigma_data=sigma_data)),
            {"t": Arg(TIME, t), "t_min": Arg(FIXED, path.t_min), "sigma_data": Arg(POS_FLOAT, 0.5)}, skip=("float_none",)),
        Api("preconditioning", "EDMPreconditioned", lambda x_t, t, sigma_data: fp.EDMPreconditioned(net, path, sigma_data)(x_t, t),
            {"x_t": Arg(BATCH, x_t), "t": Arg(TIME, t), "sigma_data": Arg(POS_FLOAT, 0.5)}, _tensor_check("x_t", "x_t"),
            skip=("float_none",), passthrough=("x_t",)),
        Api("preconditioning", "BoundaryConditioned",
            lambda x_t, t, sigma_data: fp.BoundaryConditioned(net, path, sigma_data=sigma_data)(x_t, t),
            {"x_t": Arg(BATCH, x_t), "t": Arg(TIME, t), "sigma_data": Arg(POS_FLOAT, 0.5)}, _tensor_check("x_t", "x_t"),
            skip=("float_none",), passthrough=("x_t",)),
    ]
    return apis


# --- samplers -------------------------------------------------------------------------------------------------
ALL_METHODS = [m.value for m in fs.Method]
STEP_METHODS = ["euler", "heun", "midpoint", "rk4", "ddim"]
LIKELIHOOD_METHODS = ["dopri5", "bosh3", "euler", "midpoint", "rk4"]


def _is_adaptive(method: str) -> bool:
    return fs.METHODS[fs.Method.parse(method)].adaptive


def _samples_check(ref_key: str):
    def factory(kw):
        ref = kw.get(ref_key)
        if not isinstance(ref, Tensor):
            return None

        def check(out):
            x = out.samples if isinstance(out, fs.SampleResult) else out
            assert isinstance(x, Tensor), f"expected samples as a Tensor, got {type(x).__name__}"
            assert x.shape == ref.shape, f"samples of shape {tuple(x.shape)}, expected {tuple(ref.shape)}"
            assert x.dtype == ref.dtype, f"samples of dtype {x.dtype}, expected {ref.dtype} (the input's)"
            if isinstance(out, fs.SampleResult):
                assert isinstance(out.nfe, int) and (out.nfe >= 1 if x.shape[0] else out.nfe == 0), f"nfe {out.nfe!r}"

        return check

    return factory


def sampler_apis(cfg: Config, method: str) -> list[Api]:
    """The sampler entry points with ``method`` (one method per configuration keeps a case cheap)."""
    path = cfg.path
    model = LinearModel()
    noise, data = cfg.noise(), cfg.data()
    adaptive = _is_adaptive(method)
    steps = None if adaptive else 2
    opts = {"atol": 1e-3, "rtol": 1e-3} if adaptive else {}
    # the model's prediction: evaluable at the method's ends on this path is not required — a singular
    # grid must be refused with an error naming the prediction/t_min/t_max, which is part of the fuzz
    pred = cfg.prediction.value
    common = {"model": Arg(MODEL, model), "prediction": Arg(NAME, pred), "method": Arg(NAME, method),
              "steps": Arg(FIXED if adaptive else POS_INT, steps)}
    names_singular = ("prediction", "t_min", "t_max", "grid")
    apis = [
        Api("samplers", f"sample[{method}]",
            lambda model, path, noise, prediction, method, steps: fs.sample(model, path, noise, prediction=prediction, method=method,
                                                                           steps=steps, generator=torch.Generator().manual_seed(0), **opts),
            {**common, "path": Arg(PATH, path), "noise": Arg(BATCH, noise, names=("x",))}, _samples_check("noise")),
        Api("samplers", f"integrate[{method}]",
            lambda model, path, x, prediction, method, steps: fs.integrate(model, path, x, prediction=prediction, method=method,
                                                                          steps=steps, generator=torch.Generator().manual_seed(0), **opts),
            {**common, "path": Arg(PATH, path), "x": Arg(BATCH, noise)}, _samples_check("x")),
        Api("samplers", f"invert[{method}]",
            lambda model, data, prediction, method, steps: fs.invert(model, path, data, prediction=prediction, method=method,
                                                                     steps=steps, **opts),
            {**common, "data": Arg(BATCH, data, names=("x",))}, _samples_check("data")),
        Api("samplers", f"sample_stream[{method}]",
            lambda model, num_samples, batch_size, prediction, method, steps: list(fs.sample_stream(
                model, path, num_samples=num_samples, shape=cfg.event, batch_size=batch_size, prediction=prediction, method=method,
                steps=steps, seed=0, **opts)),
            {**common, "num_samples": Arg(POS_INT, 3), "batch_size": Arg(POS_INT, 2)},
            lambda kw: (lambda out: _check_stream(out, kw["num_samples"], cfg.event))),
    ]
    apis[0].args["model"].names = apis[1].args["model"].names = ("model", "step")
    if method in STEP_METHODS:
        t = cfg.inner_t()
        apis.append(Api("samplers", f"step[{method}]",
                        lambda model, x, t, s, prediction: fs.step(model, path, x, t=t, s=s, prediction=prediction, method=method),
                        {"model": Arg(MODEL, model), "x": Arg(BATCH, noise), "t": Arg(TIME, t), "s": Arg(TIME, 0.5 * t),
                         "prediction": Arg(NAME, pred)}, _samples_check("x")))
    if method in LIKELIHOOD_METHODS:
        apis.append(Api("samplers", f"log_likelihood[{method}]",
                        lambda model, data, prediction, method, steps: fs.log_likelihood(
                            model, path, data, prediction=prediction, method=method, steps=steps,
                            t_min=path.t_min + 0.01, t_max=path.t_max - 0.01, **opts),
                        {**common, "data": Arg(BATCH, data)},
                        lambda kw: (lambda out: _check_likelihood(out, kw["data"]))))
    for api in apis:
        for a in ("prediction", "method"):
            if a in api.args:
                api.args[a].names = (a, *names_singular)
    return apis


def _check_stream(out, n, event):
    total = sum(r.samples.shape[0] for r in out)
    assert total == n, f"stream yielded {total} samples, expected {n}"
    for r in out:
        assert tuple(r.samples.shape[1:]) == tuple(event), f"chunk of shape {tuple(r.samples.shape)}"


def _check_likelihood(out, data):
    assert isinstance(out, fs.LikelihoodResult), type(out)
    assert out.log_prob.shape == (data.shape[0],), f"log_prob of shape {tuple(out.log_prob.shape)}"


def grid_apis(cfg: Config) -> list[Api]:
    path = cfg.path
    grid_check = lambda kw: (lambda g: _check_grid(g))
    apis = [
        Api("samplers", "uniform_grid", lambda steps, t_max, t_min: fs.uniform_grid(steps, t_max, t_min),
            {"steps": Arg(POS_INT, 4), "t_max": Arg(FIXED, 1.0), "t_min": Arg(FIXED, 0.0)}, grid_check),
        Api("samplers", "karras_grid", lambda steps, path, rho: fs.karras_grid(steps, path, rho),
            {"steps": Arg(POS_INT, 4), "path": Arg(PATH, path, names=("t_max", "t_min")), "rho": Arg(POS_FLOAT, 7.0)}, grid_check,
            skip=("float_none",)),
        Api("samplers", "log_snr_grid", lambda steps, path: fs.log_snr_grid(steps, path),
            {"steps": Arg(POS_INT, 4), "path": Arg(PATH, path, names=("t_max", "t_min"))}, grid_check),
        Api("samplers", "shifted_grid", lambda steps, shift: fs.shifted_grid(steps, shift),
            {"steps": Arg(POS_INT, 4), "shift": Arg(POS_FLOAT, 3.0)}, grid_check, skip=("float_none",)),
        Api("samplers", "make_grid", lambda kind, steps, path: fs.make_grid(kind, steps, path),
            {"kind": Arg(NAME, "karras", names=("grid",)), "steps": Arg(POS_INT, 3), "path": Arg(PATH, path, names=("t_max", "t_min"))},
            grid_check),
        Api("samplers", "check_grid", lambda grid: fs.check_grid(grid),
            {"grid": Arg(TIME, torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=cfg.dtype if cfg.dtype == torch.float64 else torch.float32))},
            grid_check, skip=("t_all_0", "t_all_1", "t_scalar", "t_float", "t_list", "t_float16", "t_bfloat16", "t_float64",
                              "t_batch_plus_one", "t_above_1", "t_below_0")),
        Api("samplers", "seeded_noise", lambda seeds, shape: fs.seeded_noise(seeds, shape),
            {"seeds": Arg(FIXED, [1, 2, 3]), "shape": Arg(FIXED, cfg.event)}),
    ]
    return apis


def _check_grid(g):
    assert isinstance(g, Tensor) and g.dim() == 1 and g.numel() >= 2, f"grid {g!r}"
    assert bool((g[1:] < g[:-1]).all()), f"grid not strictly decreasing: {g}"


def grid_value_cases(cfg: Config):
    """check_grid on malformed grids (non-monotone, out of range, too short, NaN)."""
    bad = {
        "increasing": [0.0, 0.5, 1.0, 0.9],
        "repeated": [1.0, 0.5, 0.5, 0.0],
        "out_of_range": [1.2, 0.5, 0.0],
        "negative": [1.0, 0.5, -0.1],
        "single": [1.0],
        "empty": [],
        "nan": [1.0, float("nan"), 0.0],
        "two_d": [[1.0, 0.0]],
        "strings": ["1", "0"],
    }
    for label, g in bad.items():
        yield f"check_grid({label})", (lambda g=g: fs.check_grid(g)), ("grid",)
        yield f"sample(grid={label})", (lambda g=g: fs.sample(LinearModel(), cfg.path, cfg.noise(), prediction="velocity",
                                                              method="euler", grid=g)), ("grid",)


# --- distillation -------------------------------------------------------------------------------------------------
def distill_apis(cfg: Config) -> list[Api]:
    path = cfg.path
    teacher = LinearModel(0.3)
    student = LinearModel(0.2)
    data, noise = cfg.data(), cfg.noise()
    t = cfg.inner_t()
    lo = path.t_min
    t_mid, t_next = lo + 0.6 * (t - lo), lo + 0.3 * (t - lo)
    tp, sp = cfg.prediction.value, cfg.other.value
    per_sample = _per_sample_check("data")
    step_fn = fd.teacher_ode_step(teacher, path, tp, solver="euler")
    loss_common = {"data": Arg(BATCH, data), "noise": Arg(BATCH, noise)}
    sing = ("teacher_prediction", "student_prediction", "prediction")
    apis = [
        Api("distill", "progressive_target",
            lambda teacher, x_t, t, t_mid, t_next, teacher_prediction, student_prediction: fd.progressive_target(
                teacher, x_t=x_t, t=t, t_mid=t_mid, t_next=t_next, path=path, teacher_prediction=teacher_prediction,
                student_prediction=student_prediction),
            {"teacher": Arg(MODEL, teacher), "x_t": Arg(BATCH, data), "t": Arg(TIME, t, names=("t_mid", "times")),
             "t_mid": Arg(TIME, t_mid, names=("times", "t")), "t_next": Arg(TIME, t_next, names=("times", "t_mid")),
             "teacher_prediction": Arg(NAME, tp, names=sing), "student_prediction": Arg(NAME, sp, names=sing)},
            _tensor_check("x_t", "x_t")),
        Api("distill", "progressive_distillation_loss",
            lambda student, data, noise, t, t_mid, t_next: fd.progressive_distillation_loss(
                student, teacher, data=data, noise=noise, t=t, t_mid=t_mid, t_next=t_next, path=path, teacher_prediction=tp,
                student_prediction=sp),
            {"student": Arg(MODEL, student), **loss_common, "t": Arg(TIME, t, names=("t_mid", "times")),
             "t_mid": Arg(TIME, t_mid, names=("times", "t")), "t_next": Arg(TIME, t_next, names=("times", "t_mid"))},
            per_sample, passthrough=("student",)),
        Api("distill", "consistency_distillation_loss",
            lambda student, data, noise, t, s, metric: fd.consistency_distillation_loss(
                student, teacher_step=step_fn, data=data, noise=noise, t=t, s=s, path=path, metric=metric),
            {"student": Arg(MODEL, student), **loss_common, "t": Arg(TIME, t, names=("times", "s")), "s": Arg(TIME, t_mid, names=("times", "t")),
             "metric": Arg(NAME, "pseudo_huber")},
            per_sample, passthrough=("student",)),
        Api("distill", "consistency_training_loss",
            lambda student, data, noise, t, s: fd.consistency_training_loss(student, data=data, noise=noise, t=t, s=s, path=path),
            {"student": Arg(MODEL, student), **loss_common, "t": Arg(TIME, t, names=("times", "s")), "s": Arg(TIME, t_mid, names=("times", "t"))},
            per_sample, passthrough=("student",)),
        Api("distill", "reflow_loss",
            lambda student, noise, endpoint, t, prediction: fd.reflow_loss(student, noise=noise, endpoint=endpoint, t=t, path=path,
                                                                           prediction=prediction),
            {"student": Arg(MODEL, student), "noise": Arg(BATCH, noise), "endpoint": Arg(BATCH, data), "t": Arg(TIME, t),
             "prediction": Arg(NAME, sp)},
            _per_sample_check("endpoint"), passthrough=("student",)),
        Api("distill", "one_step_distillation_loss",
            lambda student, noise, endpoint, prediction: fd.one_step_distillation_loss(
                student, noise=noise, endpoint=endpoint, path=path, prediction=prediction),
            {"student": Arg(MODEL, student), "noise": Arg(BATCH, noise), "endpoint": Arg(BATCH, data),
             "prediction": Arg(NAME, sp, names=("t_min", "t_max"))},
            _per_sample_check("endpoint"), passthrough=("student",),
            # the loss compares the student's one-step *sample* (its output, converted to a velocity) with the
            # endpoint: a sample that overflows float16/bfloat16 is a non-finite network output, left to the trainer
            allow_nonfinite=lambda kw: lambda out: any(isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16)
                                                       for v in kw.values())),
        Api("distill", "teacher_ode_step",
            lambda teacher, prediction, solver, x, t, s: fd.teacher_ode_step(teacher, path, prediction, solver=solver)(x, t, s),
            {"teacher": Arg(MODEL, teacher), "prediction": Arg(NAME, tp, names=("t",)), "solver": Arg(NAME, "heun"),
             "x": Arg(BATCH, data), "t": Arg(TIME, t), "s": Arg(TIME, t_mid)},
            _tensor_check("x", "x")),
        Api("distill", "ReflowGenerator.sample",
            lambda model, noise, steps: fd.ReflowGenerator(model, path, "velocity").sample(noise, steps=steps),
            {"model": Arg(MODEL, student), "noise": Arg(BATCH, noise), "steps": Arg(POS_INT, 2)}, _samples_check("noise")),
        Api("distill", "ConsistencyGenerator.sample",
            lambda model, noise, steps: fd.ConsistencyGenerator(fp.BoundaryConditioned(model, path), path).sample(
                noise, steps=steps, generator=torch.Generator().manual_seed(0)),
            {"model": Arg(MODEL, student), "noise": Arg(BATCH, noise), "steps": Arg(POS_INT, 2)}, _samples_check("noise"),
            passthrough=("model",)),
        Api("distill", "ConsistencyTraining.loss",
            lambda student, data, step: fd.ConsistencyTraining(path, total_steps=20).loss(
                fp.BoundaryConditioned(student, path), data, step=step, generator=torch.Generator().manual_seed(0)).loss,
            {"student": Arg(MODEL, student), "data": Arg(BATCH, data), "step": Arg(POS_INT, 3)}, passthrough=("student",)),
    ]
    grid_ok = not bool(singular_at(path, fs.uniform_grid(4, path.t_max, path.t_min)[:-1], src=tp, dst="data").any()
                       | singular_at(path, fs.uniform_grid(4, path.t_max, path.t_min)[:-1], src=tp, dst="noise").any())
    apis.append(Api("distill", "ProgressiveDistillation.loss",
                    lambda student, data, student_steps: fd.ProgressiveDistillation(
                        teacher, student_steps=student_steps, path=path, teacher_prediction=tp, student_prediction=tp,
                        t_max=path.t_max - 0.01).loss(student, data, generator=torch.Generator().manual_seed(0)).per_sample,
                    {"student": Arg(MODEL, student), "data": Arg(BATCH, data), "student_steps": Arg(POS_INT, 2, names=sing + ("t",))},
                    per_sample, passthrough=("student",)))
    del grid_ok
    return apis


# --- nn ---------------------------------------------------------------------------------------------------
def nn_apis(cfg: Config) -> list[Api]:
    from flowgen import nn as fnn

    torch.manual_seed(cfg.seed)
    gen = cfg.gen()
    x2 = torch.randn(cfg.batch, 2, generator=gen)
    img = torch.randn(cfg.batch, 1, 8, 8, generator=gen)
    t = torch.rand(cfg.batch, generator=gen)
    labels = torch.randint(0, 3, (cfg.batch,), generator=gen)
    mlp = fnn.MLP(2, hidden=16, depth=2, num_classes=3)
    unet = fnn.UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_classes=3, mid_attention=False)
    dit = fnn.DiT(in_channels=1, patch_size=2, hidden=16, depth=1, heads=2, num_classes=3)
    model_dtype = lambda kw: (torch.float32,)
    apis = [Api("nn", "MLP", lambda x_t, t, cond: mlp(x_t, t, cond),
                {"x_t": Arg(BATCH, x2), "t": Arg(TIME, t), "cond": Arg(FIXED, labels)},
                _tensor_check("x_t", dtypes=model_dtype), passthrough=("x_t",))]
    empty = {"x_t": Arg(FIXED, x2[:0]), "t": Arg(FIXED, t[:0]), "cond": Arg(FIXED, labels[:0])}
    apis.append(Api("nn", "MLP[empty]", lambda x_t, t, cond: mlp(x_t, t, cond), empty, _tensor_check("x_t", dtypes=model_dtype)))
    for name, net in (("UNet", unet), ("DiT", dit)):
        apis.append(Api("nn", name, lambda x_t, t, cond, net=net: net(x_t, t, cond),
                        {"x_t": Arg(BATCH, img), "t": Arg(TIME, t), "cond": Arg(FIXED, labels)},
                        _tensor_check("x_t", dtypes=model_dtype), passthrough=("x_t",),
                        skip=("t_below_0", "t_above_1", "t_all_0", "t_all_1", "empty_batch")))
        apis.append(Api("nn", f"{name}[empty]", lambda x_t, t, cond, net=net: net(x_t, t, cond),
                        {"x_t": Arg(FIXED, img[:0]), "t": Arg(FIXED, t[:0]), "cond": Arg(FIXED, labels[:0])},
                        _tensor_check("x_t", dtypes=model_dtype)))
    # models take any finite real t (log σ, log-SNR …); an empty batch is tried with empty labels above
    apis[0].skip = ("t_below_0", "t_above_1", "t_all_0", "t_all_1", "empty_batch")
    label_cases = [("cond_float", labels.float()), ("cond_out_of_range", labels + 10), ("cond_negative", labels - 5),
                   ("cond_wrong_batch", torch.cat([labels, labels])), ("cond_2d", labels[:, None])]
    for label, bad in label_cases:
        apis.append(Api("nn", f"MLP[{label}]", lambda cond: mlp(x2, t, cond), {"cond": Arg(FIXED, bad)}))
    return apis


# --- metrics ------------------------------------------------------------------------------------------------
def metrics_apis(cfg: Config) -> list[Api]:
    gen = cfg.gen()
    n = max(cfg.batch, 2) + 2
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(cfg.dtype)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(cfg.dtype)
    scalar = lambda kw: (lambda out: _check_scalar(out))
    density = flowgen.data.toy_density("8gaussians")
    apis = [
        Api("metrics", "wasserstein2", lambda x, y: fm.wasserstein2(x, y), {"x": Arg(BATCH, x), "y": Arg(BATCH, y)}, scalar),
        Api("metrics", "w2_squared", lambda x, y: fm.w2_squared(x, y), {"x": Arg(BATCH, x), "y": Arg(BATCH, y)}, scalar),
        Api("metrics", "sliced_w2_squared", lambda x, y: fm.sliced_w2_squared(x, y, projections=8),
            {"x": Arg(BATCH, x), "y": Arg(BATCH, y)}, scalar),
        Api("metrics", "mmd", lambda x, y, kernel: fm.mmd(x, y, kernel=kernel), {"x": Arg(BATCH, x), "y": Arg(BATCH, y),
                                                                                 "kernel": Arg(NAME, "rbf")},
            lambda kw: _check_number),  # the unbiased MMD² estimate may be negative
        Api("metrics", "frechet_distance", lambda features_x, features_y: fm.frechet_distance(features_x, features_y),
            {"features_x": Arg(BATCH, x), "features_y": Arg(BATCH, y)}, scalar),
        Api("metrics", "log_likelihood", lambda x, reduction: fm.log_likelihood(x, density, reduction=reduction),
            {"x": Arg(BATCH, x), "reduction": Arg(NAME, "mean")}),
        Api("metrics", "gaussian_stats", lambda features: fm.gaussian_stats(features), {"features": Arg(BATCH, x)}),
    ]
    return apis


def _check_number(out):
    assert math.isfinite(float(out)), f"metric {out!r} should be a finite number"


def _check_scalar(out):
    v = float(out)
    assert math.isfinite(v) and v >= -1e-9, f"metric {out!r} should be a finite non-negative number"
