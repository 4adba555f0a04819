"""``flowgen distill``: distil a teacher checkpoint with a recipe, and the end-to-end distillation report.

Commands::

    flowgen distill --config recipes/distill/<method>_<data>.yaml --teacher <teacher.ckpt> [overrides] [--ckpt_path last]
    flowgen distill report --config recipes/distill/report_<data>.yaml [--out DIR] [--max-steps-scale F]

The first runs LightningCLI's ``fit`` over the distillation modules of
:mod:`flowgen.lightning.distill` (the recipe names the module class; ``--teacher`` becomes
``--model.init_args.teacher``). Every LightningCLI override works (``--trainer.max_steps``,
``--data.init_args.name``, ``--seed_everything``, …); ``--ckpt_path last`` resumes an interrupted
run from ``<root>/checkpoints/last.ckpt``. The student checkpoint (``last.ckpt``) and the
per-phase snapshots (``<root>/students/*.ckpt``) sample with ``flowgen sample --ckpt … --steps K``.

The second trains a teacher with a ``flowgen fit`` recipe, distils it with each listed distillation
recipe, and evaluates everything against held-out data with the quality ratio

    R_k = (d(student at k steps) − floor) / (d(teacher reference) − floor)

(``d`` the squared W2 for vector data, the digits classifier Fréchet distance for 8×8 digits;
``floor`` the same distance between two independent data draws; the teacher reference its adaptive
dopri5 sampler), the distillation error (RMS distance to the teacher's dopri5 endpoints on shared
noise) and the sampling throughput. It writes ``report.md`` (a table), ``report.json``,
``figures/quality_vs_nfe.png`` and side-by-side samples (``figures/samples.png``). Finished stages
are reused when the command is run again, so an interrupted report resumes.

Errors in the input are printed as one line naming the key or file; ``FLOWGEN_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

__all__ = [
    "main",
    "run_distill",
    "run_report",
    "EvalProtocol",
    "make_protocol",
    "evaluate_entries",
    "reference_samples",
    "with_ratios",
    "teacher_entries",
    "student_entries",
    "line_plot_png",
    "format_markdown_table",
]

_USAGE = """usage: flowgen distill --config RECIPE.yaml --teacher TEACHER.ckpt [LightningCLI overrides] [--ckpt_path last]
       flowgen distill report --config REPORT.yaml [--out DIR] [--max-steps-scale F]

Distil a teacher into a few-step student with a recipe from recipes/distill/ (progressive_*, cd_*, ct_*,
reflow_*), or run the end-to-end report (report_*.yaml): train a teacher, distil it with every method and
write a table, quality-vs-NFE plots and sample figures.
"""


def _fail(prog: str, err: BaseException) -> int:
    if os.environ.get("FLOWGEN_DEBUG"):
        raise err
    msg = str(err)
    if "Does not validate against any of the Union subtypes" in msg:
        reasons = [ln.strip()[2:] for ln in msg.splitlines() if ln.strip().startswith("- ") and "NoneType" not in ln]
        msg = "; ".join(reasons) or msg
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 1


# =============================================================================================
# flowgen distill (LightningCLI fit over the distillation modules)
# =============================================================================================
def _split_teacher(argv: list[str]) -> tuple[str | None, list[str]]:
    teacher, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--teacher":
            if i + 1 >= len(argv):
                raise ValueError("--teacher needs a checkpoint file")
            teacher, i = argv[i + 1], i + 2
            continue
        if a.startswith("--teacher="):
            teacher = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return teacher, rest


def run_distill(argv: list[str], *, run: bool = True):
    """Run ``flowgen distill`` in-process and return the ``LightningCLI`` object (``.model``, ``.trainer``).

    Args:
        argv: ``["--config", recipe, "--teacher", ckpt, *overrides]``.
        run: run ``fit`` (``False``: only parse and instantiate).

    Raises:
        SystemExit: a config error (jsonargparse prints the key).
        ValueError, TypeError, FileNotFoundError, flowgen.checkpoint.CheckpointError: bad teacher, data or options.
    """
    from .cli import run_lightning_cli
    from .lightning.distill import DistillModule

    teacher, rest = _split_teacher(list(argv))
    if rest and rest[0] == "fit":
        rest = rest[1:]
    if teacher is not None:
        if not os.path.isfile(teacher):
            raise FileNotFoundError(f"--teacher {teacher!r}: no such checkpoint file")
        rest = rest + ["--model.init_args.teacher", teacher]
    args = (["fit"] if run else []) + rest
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*modules? in eval mode.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*LightningCLI's args parameter.*")  # flowgen distill rewrites its argv
    return run_lightning_cli(args, model_class=DistillModule, subclass_mode_model=True, prog="flowgen distill", run=run)


def _cmd_distill(argv: list[str]) -> int:
    from .checkpoint import CheckpointError

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_USAGE)
        if argv:
            try:
                run_distill(["--help"])
            except SystemExit:
                pass
        return 0 if argv else 2
    t0 = time.perf_counter()
    try:
        cli = run_distill(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    except (CheckpointError, ValueError, TypeError, FileNotFoundError, FloatingPointError) as err:
        return _fail("flowgen distill", err)
    model, trainer = cli.model, cli.trainer
    last = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
    print(f"flowgen distill: {model.method_name} finished in {time.perf_counter() - t0:.1f} s "
          f"({trainer.global_step} steps)")
    if os.path.isfile(last):
        gen = model.generator()
        steps = gen.supported_steps
        print(f"  student checkpoint  {last}  (steps: {'any' if steps is None else list(steps)})")
    for f in model.exported:
        print(f"  snapshot            {f}")
    if os.path.isfile(last):
        print(f"next: flowgen sample --ckpt {last} --steps {model.generator().default_steps} --num 1000 --out samples.png")
    return 0


# =============================================================================================
# evaluation: the R_k protocol
# =============================================================================================
@dataclass
class EvalProtocol:
    """Held-out sets, noise and floors for ``repeats`` independent evaluations of ``num`` samples.

    Attributes:
        metric: ``"w2"`` (squared W2 by exact assignment) or ``"fd"`` (digits classifier Fréchet distance).
        refs: ``repeats`` held-out sets ``(n_ref, *D)``.
        noises: ``repeats`` noise sets ``(num, *D)`` shared by every model (teacher and students).
        floors: ``repeats`` values of ``d(independent data draw, refs[i])``.
    """

    metric: str
    refs: list = field(default_factory=list)
    noises: list = field(default_factory=list)
    floors: list = field(default_factory=list)

    @property
    def floor(self) -> float:
        return float(sum(self.floors) / len(self.floors)) if self.floors else float("nan")

    @property
    def repeats(self) -> int:
        return len(self.noises)

    def distance(self, samples, i: int) -> float:
        import torch

        s = samples.detach().double().cpu()
        if not bool(torch.isfinite(s).all()):
            return float("nan")
        r = self.refs[i].double().cpu()
        if self.metric == "fd":
            from .metrics import digits_frechet_distance

            return float(digits_frechet_distance(s.float(), r.float()))
        from .metrics.distances import w2_squared

        n = min(s.shape[0], r.shape[0])
        return float(w2_squared(s[:n].flatten(1), r[:n].flatten(1)))


def make_protocol(meta: dict, *, num: int = 2000, repeats: int = 1, seed: int = 0, floor_draws: int = 8) -> EvalProtocol:
    """The evaluation protocol for a checkpoint's data (recorded in its metadata).

    * 2-D toys: held-out set ``i`` is the data module's fixed held-out draw for ``i = 0`` and fresh
      draws for ``i > 0``; its floor is the mean distance of ``floor_draws`` independent draws of the
      same size to it (one draw's distance scatters too much: on the Gaussian mixture a single
      draw's floor once exceeded the teacher's distance); ``d`` is the squared W2.
    * 8×8 digits: the held-out test split (359 images) is the reference; the floor is the
      Fréchet distance of ``num`` training images (drawn with replacement if needed) to it; ``d``
      is the classifier Fréchet distance.
    * other data: the data module's held-out set, squared W2, no floor.
    """
    import torch

    from .cli import reference_data

    spec = meta.get("data") or {}
    cls = spec.get("class_path", "") if isinstance(spec, dict) else ""
    init = dict(spec.get("init_args") or {}) if isinstance(spec, dict) else {}
    shape = tuple(int(d) for d in (meta.get("data_shape") or ()))
    proto = EvalProtocol(metric="w2")
    if cls.endswith("ToyDataModule"):
        from .data.toys import sample_toy

        name = init.get("name", "moons")
        base = int(init.get("val_seed", 12345))
        for i in range(repeats):
            ref = sample_toy(name, num, generator=torch.Generator().manual_seed(base + 7919 * i))
            proto.refs.append(ref)
            draws = [sample_toy(name, num, generator=torch.Generator().manual_seed(10_000_019 + base + 104_729 * i + 7_919_993 * j + seed))
                     for j in range(floor_draws)]
            proto.floors.append(sum(proto.distance(d, len(proto.refs) - 1) for d in draws) / floor_draws)
    elif cls.endswith("DigitsDataModule"):
        from .data.digits import load_digits

        proto.metric = "fd"
        test, _ = load_digits("test")
        train, _ = load_digits("train")
        for i in range(repeats):
            g = torch.Generator().manual_seed(seed * 1000 + i)
            idx = torch.randint(0, train.shape[0], (num,), generator=g) if num > train.shape[0] else torch.randperm(train.shape[0], generator=g)[:num]
            proto.refs.append(test)
            proto.floors.append(proto.distance(train[idx], i))
    else:
        ref = reference_data(meta)
        proto.refs = [ref[:num]] * repeats
    if not shape:
        shape = tuple(proto.refs[0].shape[1:])
    for i in range(repeats):
        g = torch.Generator().manual_seed(777 + 1009 * i + seed)
        proto.noises.append(torch.randn((num, *shape), generator=g))
    return proto


@dataclass
class Entry:
    """One sampler to evaluate: ``fn(noise, i) → samples`` with ``nfe`` model evaluations per sample."""

    model: str
    sampler: str
    steps: int | None
    fn: object
    nfe: int | None = None
    group: str = ""


def teacher_entries(teacher, path, prediction, *, euler=(1, 2, 4, 8, 16, 32), heun=(2, 4, 8)):
    """Entries for a teacher network: Euler and Heun at several step counts (the reference: :func:`reference_samples`)."""
    from .samplers import sample

    def make(method, steps):
        return lambda noise, i: sample(teacher, path, noise, prediction=prediction, method=method, steps=steps).samples

    # NFE: Euler's is its step count; Heun's and the adaptive sampler's are counted (see evaluate_entries)
    out = [Entry("teacher", "euler", k, make("euler", k), nfe=k, group="teacher_euler") for k in euler]
    out += [Entry("teacher", "heun", k, make("heun", k), group="teacher_heun") for k in heun]
    return out


def student_entries(name: str, generator, steps=None, *, seed: int = 0):
    """Entries for a distilled generator at each of ``steps`` it supports (default: its supported ones up to 4)."""
    import torch

    supported = generator.supported_steps
    wanted = list(steps) if steps is not None else ([1, 2, 4] if supported is None else [k for k in supported if k <= 4])
    out = []
    for k in wanted:
        if supported is not None and k not in supported:
            continue

        def fn(noise, i, k=k):
            return generator.sample(noise, steps=k, generator=torch.Generator().manual_seed(seed + 31 * i + k))
        out.append(Entry(name, generator.method, k, fn, nfe=k, group=name))
    return out


def _nfe_counter(model):
    """``(calls, hook)``: counts the network's calls (each on the whole batch: the NFE per sample) with a forward hook."""
    import torch

    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) if isinstance(model, torch.nn.Module) else None
    return calls, hook


def evaluate_entries(entries: list[Entry], protocol: EvalProtocol, *, reference: list | None = None,
                     count_model=None, progress=None) -> list[dict]:
    """Evaluate every entry on every repeat of ``protocol``.

    Returns one row per entry: ``d`` (mean over repeats), ``d_std``, ``d_values`` (one per repeat), ``R`` (against the row of group
    ``teacher_reference``, or ``reference_d``), ``rms`` (distillation error against ``reference``
    samples on the same noise), ``seconds`` (mean sampling time of ``num`` samples) and ``samples_per_s``.
    """
    import torch

    rows = []
    ref_d = None
    for e in entries:
        ds, rms, secs = [], [], []
        nfe = e.nfe
        for i in range(protocol.repeats):
            noise = protocol.noises[i]
            calls, hook = _nfe_counter(count_model) if count_model is not None and e.nfe is None else ([0], None)
            t0 = time.perf_counter()
            with torch.no_grad():
                x = e.fn(noise, i)
            secs.append(time.perf_counter() - t0)
            if hook is not None:
                hook.remove()
                nfe = calls[0] if calls[0] else nfe
            ds.append(protocol.distance(x, i))
            if reference is not None:
                rms.append(float((x.double() - reference[i].double()).flatten(1).pow(2).sum(1).mean().sqrt()))
        d = sum(ds) / len(ds)
        row = {"model": e.model, "sampler": e.sampler, "steps": e.steps, "nfe": nfe, "d": d,
               "d_std": float(torch.tensor(ds).std()) if len(ds) > 1 else 0.0, "d_values": list(ds),
               "rms_to_reference": (sum(rms) / len(rms)) if rms else None,
               "seconds": sum(secs) / len(secs), "samples_per_s": protocol.noises[0].shape[0] / max(1e-9, sum(secs) / len(secs)),
               "group": e.group}
        if e.group == "teacher_reference":
            ref_d = d
        rows.append(row)
        if progress:
            progress(row)
    for row in rows:
        row["floor"] = protocol.floor
        row.setdefault("R", None)
    return rows


def reference_samples(teacher, path, prediction, protocol: EvalProtocol, method: str = "dopri5"):
    """The teacher's reference samples on each of the protocol's noise sets, and its evaluation row.

    Returns:
        ``(samples, row)``: one ``(num, *D)`` tensor per noise set, and the ``teacher_reference``
        row (``d``, NFE counted by a forward hook, sampling time) in :func:`evaluate_entries`' format.
    """
    from .samplers import sample

    out = []

    def fn(noise, i):
        x = sample(teacher, path, noise, prediction=prediction, method=method).samples
        out.append(x)
        return x

    rows = evaluate_entries([Entry("teacher", method, None, fn, group="teacher_reference")], protocol, count_model=teacher)
    rows[0]["rms_to_reference"] = 0.0
    return out, rows[0]


def with_ratios(rows: list[dict], floor: float, *, floors: list[float] | None = None) -> list[dict]:
    """Set ``R`` on every row against the ``teacher_reference`` row: ``(d − floor)/(d_ref − floor)``.

    With ``floors`` (the protocol's per-set floors) and rows carrying ``d_values`` on the same sets,
    also set ``R_se``: the jackknife standard error of ``R`` over the evaluation sets (leave one set
    out of every mean; the sets are paired, so their shared noise cancels). It is the evaluation's
    share of the uncertainty; seed-to-seed scatter comes on top.
    """
    ref = next((r for r in rows if r["group"] == "teacher_reference"), None)
    d_ref = None if ref is None else ref["d"]
    for r in rows:
        ok = d_ref is not None and math.isfinite(floor) and d_ref > floor
        r["R"] = (r["d"] - floor) / (d_ref - floor) if ok else None
        r["R_se"] = _jackknife_ratio_se(r.get("d_values"), ref.get("d_values"), floors) if ok else None
    return rows


def _jackknife_ratio_se(d: list | None, d_ref: list | None, floors: list | None) -> float | None:
    """Jackknife standard error of ``(mean d − mean f)/(mean d_ref − mean f)`` over paired sets; ``None`` if undefined."""
    n = len(floors or ())
    if n < 2 or d is None or d_ref is None or len(d) != n or len(d_ref) != n:
        return None
    sd, sr, sf = sum(d), sum(d_ref), sum(floors)
    loo = []
    for i in range(n):
        den = (sr - d_ref[i]) - (sf - floors[i])
        if not den > 0:
            return None
        loo.append(((sd - d[i]) - (sf - floors[i])) / den)
    m = sum(loo) / n
    return math.sqrt((n - 1) / n * sum((x - m) ** 2 for x in loo))


# =============================================================================================
# figures
# =============================================================================================
def _render_lines(series, *, width=640, height=420, xlog=True, ylog=True, title="", xlabel="NFE", ylabel="D",
                  hlines=()) -> "object":
    """Rasterise line series into an RGB array: ``series = [(label, xs, ys, color, marker_only)]``."""
    import numpy as np

    from .viz import COLORS, _draw_text, _text_mask

    canvas = np.ones((height, width, 3))
    left, right, top, bottom = 70, 200, 34, 46
    pw, ph = width - left - right, height - top - bottom
    pts = [(x, y) for _, xs, ys, _, _ in series for x, y in zip(xs, ys) if x and y and math.isfinite(y) and y > 0]
    pts += [(None, y) for _, y, _ in hlines if y and y > 0 and math.isfinite(y)]
    xs_all = [p[0] for p in pts if p[0]] or [1, 2]
    ys_all = [p[1] for p in pts] or [1e-3, 1.0]
    fx = (lambda v: math.log10(v)) if xlog else (lambda v: v)
    fy = (lambda v: math.log10(v)) if ylog else (lambda v: v)
    x0, x1 = fx(min(xs_all)), fx(max(xs_all))
    y0, y1 = fy(min(ys_all)), fy(max(ys_all))
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    padx, pady = 0.05 * (x1 - x0), 0.08 * (y1 - y0)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady

    def px(v):
        return left + int(round((fx(v) - x0) / (x1 - x0) * (pw - 1)))

    def py(v):
        return top + int(round((y1 - fy(v)) / (y1 - y0) * (ph - 1)))

    def dot(y, x, color, r=2):
        y_lo, y_hi, x_lo, x_hi = max(0, y - r), min(height, y + r + 1), max(0, x - r), min(width, x + r + 1)
        canvas[y_lo:y_hi, x_lo:x_hi] = color

    def segment(xa, ya, xb, yb, color, dashed=False):
        n = max(abs(xb - xa), abs(yb - ya), 1)
        for j in range(n + 1):
            if dashed and (j // 6) % 2:
                continue
            x = int(round(xa + (xb - xa) * j / n))
            y = int(round(ya + (yb - ya) * j / n))
            if 0 <= y < height and 0 <= x < width:
                canvas[max(0, y - 0):y + 2, x:x + 1] = color
    # frame and ticks
    grey = (0.6, 0.6, 0.6)
    canvas[top:top + ph, left] = grey
    canvas[top + ph - 1, left:left + pw] = grey
    for dec in range(int(math.floor(y0)), int(math.ceil(y1)) + 1) if ylog else []:
        y = py(10.0**dec)
        if top <= y < top + ph:
            canvas[y, left:left + pw:3] = (0.85, 0.85, 0.85)
            _draw_text(canvas, f"1E{dec}", y - 5, left - 32, scale=1)
    for dec in range(int(math.floor(x0)), int(math.ceil(x1)) + 1) if xlog else []:
        for m in (1, 2, 5):
            v = m * 10.0**dec
            if x0 <= math.log10(v) <= x1:
                x = px(v)
                canvas[top + ph - 1:top + ph + 3, x] = grey
                _draw_text(canvas, f"{v:g}", top + ph + 6, x, scale=1)
    for label, y, color in hlines:
        if y and y > 0 and math.isfinite(y):
            yy = py(y)
            segment(left, yy, left + pw - 1, yy, color, dashed=True)
    legend_y = top
    for j, (label, xs, ys, color, marker_only) in enumerate(series):
        color = color or COLORS[j % len(COLORS)]
        good = [(x, y) for x, y in zip(xs, ys) if x and y and math.isfinite(y) and y > 0]
        prev = None
        for x, y in good:
            cx, cy = px(x), py(y)
            if prev is not None and not marker_only:
                segment(prev[0], prev[1], cx, cy, color)
            dot(cy, cx, color, r=3 if marker_only else 2)
            prev = (cx, cy)
        dot(legend_y + 6, left + pw + 16, color, r=4)
        _draw_text(canvas, label.upper()[:22], legend_y + 3, left + pw + 26 + len(label[:22]) * 3, scale=1)
        legend_y += 16
    for label, y, color in hlines:
        segment(left + pw + 10, legend_y + 6, left + pw + 22, legend_y + 6, color, dashed=False)
        _draw_text(canvas, label.upper()[:22], legend_y + 3, left + pw + 28 + len(label[:22]) * 3, scale=1)
        legend_y += 16
    if title:
        _draw_text(canvas, title.upper(), 8, left + pw // 2, scale=2)
    _draw_text(canvas, xlabel.upper(), height - 16, left + pw // 2, scale=1)
    mask = _text_mask(ylabel.upper(), 1)
    if mask.shape[1] < height:
        rot = mask.T[::-1]
        y_start = top + (ph - rot.shape[0]) // 2
        region = canvas[y_start:y_start + rot.shape[0], 6:6 + rot.shape[1]]
        region[rot[:region.shape[0], :region.shape[1]]] = (0.1, 0.1, 0.1)
    return canvas


def line_plot_png(path, series, **kwargs) -> str:
    """Write a line plot (log-log by default) of ``series = [(label, xs, ys, color | None, marker_only)]`` to a PNG.

    ``hlines=[(label, y, color)]`` adds dashed horizontal lines (e.g. the teacher reference and the floor).
    """
    from .viz import write_png

    return write_png(path, _render_lines(series, **kwargs))


def samples_figure(path, panels: list[tuple[str, object]], *, reference=None) -> str | None:
    """Samples side by side: scatter panels for 2-D data, image grids (one column per model) for images."""
    import numpy as np

    from .viz import _draw_text, is_image_shape, render_image_grid, scatter_png, write_png

    if not panels:
        return None
    shape = tuple(panels[0][1].shape[1:])
    if shape == (2,):
        items = ([("DATA", [(reference[:2000], (0.45, 0.45, 0.45))])] if reference is not None else [])
        items += [(title.upper()[:24], [(x[:2000], (0.12, 0.47, 0.71))]) for title, x in panels]
        return scatter_png(path, items, size=220)
    if is_image_shape(shape):
        grids = []
        if reference is not None:
            panels = [("DATA", reference)] + list(panels)
        for title, x in panels:
            g = render_image_grid(x[:64], nrow=8, scale=3)
            head = np.ones((22, g.shape[1], 3))
            _draw_text(head, title.upper()[:16], 4, g.shape[1] // 2, scale=1)
            grids.append(np.concatenate([head, g], 0))
        h = max(g.shape[0] for g in grids)
        grids = [np.concatenate([g, np.ones((h - g.shape[0], g.shape[1], 3))], 0) for g in grids]
        sep = np.ones((h, 8, 3))
        out = grids[0]
        for g in grids[1:]:
            out = np.concatenate([out, sep, g], 1)
        return write_png(path, out)
    return None


# =============================================================================================
# tables
# =============================================================================================
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def format_markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with ``columns = [(key, header)]``."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


# =============================================================================================
# the end-to-end report
# =============================================================================================
def _resolve_file(name: str, config_dir: str) -> str:
    candidates = [name, os.path.join(config_dir, name), os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f"recipe {name!r} not found (looked in the current folder, next to the report config and in the flowgen checkout)")


def _as_args(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += [k if k.startswith("--") else f"--{k}", "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))]
        return out
    raise ValueError(f"{where} must be a list of command-line arguments or a mapping of overrides, got {value!r}")


def _read_report_config(file: str) -> dict:
    import yaml

    with open(file) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"report config {file!r} must be a mapping")
    known = {"out", "seed", "teacher", "students", "evaluation"}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"report config {file!r} has unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    if not isinstance(cfg.get("teacher"), dict) or "recipe" not in cfg["teacher"]:
        raise ValueError(f"report config {file!r}: 'teacher' must be a mapping with a 'recipe'")
    students = cfg.get("students")
    if not isinstance(students, list) or not students:
        raise ValueError(f"report config {file!r}: 'students' must be a non-empty list of {{name, recipe, args}}")
    for i, s in enumerate(students):
        if not isinstance(s, dict) or "name" not in s or "recipe" not in s:
            raise ValueError(f"report config {file!r}: students[{i}] needs 'name' and 'recipe'")
        bad = set(s) - {"name", "recipe", "args", "of", "steps"}
        if bad:
            raise ValueError(f"report config {file!r}: students[{i}] has unknown keys {sorted(bad)}")
        if "of" in s and s["of"] not in [t["name"] for t in students[:i]]:
            raise ValueError(f"report config {file!r}: students[{i}].of must name an earlier student stage, got {s['of']!r}")
        if "steps" in s and ("of" not in s or not isinstance(s["steps"], list) or not s["steps"]
                             or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in s["steps"])):
            raise ValueError(f"report config {file!r}: students[{i}].steps must be a non-empty list of positive ints "
                             "and needs 'of' (the stage whose progressive snapshots are fine-tuned)")
    ev = cfg.get("evaluation") or {}
    bad = set(ev) - {"num_samples", "repeats", "teacher_euler_steps", "teacher_heun_steps", "student_steps"}
    if bad:
        raise ValueError(f"report config {file!r}: evaluation has unknown keys {sorted(bad)}")
    return cfg


def _scaled_steps(args: list[str], scale: float | None) -> list[str]:
    """Scale every ``--*steps*`` integer override by ``scale`` (quick runs of a report)."""
    if not scale or scale == 1.0:
        return args
    out = list(args)
    for i in range(len(out) - 1):
        if out[i].startswith("--") and ("steps" in out[i] and "sample" not in out[i] and "val" not in out[i]) and out[i + 1].isdigit():
            out[i + 1] = str(max(1, int(round(int(out[i + 1]) * scale))))
    return out


def _done_marker(folder: str) -> str:
    return os.path.join(folder, "DONE.json")


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
    os.replace(tmp, path)


def _fit_seconds(cli) -> float:
    """Training seconds from the run's :class:`~flowgen.lightning.TrainingClock` (the CLI always adds one)."""
    from .lightning.callbacks import TrainingClock

    return next(c for c in cli.trainer.callbacks if isinstance(c, TrainingClock)).seconds


def _finished_run(marker: str, settings: dict) -> dict:
    """A finished stage's marker, if it was run with ``settings``; a clear error if not.

    Reusing a finished run made with another recipe, other arguments, seed or teacher would
    silently report the wrong run. Settings a marker does not record (older markers) are not compared;
    the recipe and teacher files compare as absolute paths.
    """
    with open(marker) as fh:
        info = json.load(fh)

    def recorded(key):  # files compare as absolute paths (an older marker may hold a relative one)
        return os.path.abspath(info[key]) if key in ("recipe", "teacher") else info[key]

    differ = [k for k, v in settings.items() if k in info and recorded(k) != v]
    if differ:
        shown = "; ".join(f"{k}: finished with {info[k]!r}, asked for {settings[k]!r}" for k in differ)
        raise ValueError(f"{os.path.dirname(marker)} holds a finished run with other settings ({shown}); "
                         "remove that folder or choose another output folder")
    return info


def train_teacher(recipe: str, root: str, *, seed: int, args: list[str]) -> tuple[str, float]:
    """``flowgen fit`` a teacher recipe into ``root`` (resuming, or reusing a run finished with the same settings).

    Returns:
        ``(last.ckpt, seconds)``: the seconds are the run's training clock, which a resumed run
        continues from its checkpoint (the time of the kept work, over all sessions).
    """
    from .cli import run_lightning_cli

    last = os.path.join(root, "checkpoints", "last.ckpt")
    marker = _done_marker(root)
    settings = {"recipe": os.path.abspath(recipe), "args": list(args), "seed": seed}
    if os.path.isfile(marker) and os.path.isfile(last):
        return last, float(_finished_run(marker, settings).get("seconds", float("nan")))
    extra = ["--ckpt_path", last] if os.path.isfile(last) else []
    cli = run_lightning_cli(["fit", "--config", recipe, "--trainer.default_root_dir", root, "--seed_everything", str(seed),
                             "--trainer.enable_progress_bar", "false", *args, *extra])
    sec = _fit_seconds(cli)
    _write_json(marker, {"seconds": sec, **settings})
    return last, sec


def distill_student(recipe: str, root: str, *, teacher: str, seed: int, args: list[str]) -> tuple[dict, float]:
    """Run a distillation recipe into ``root`` (resuming, or reusing a run finished with the same settings).

    Returns:
        ``({snapshot name: file}, seconds)`` — the exported per-phase students plus ``"last"``, and the
        run's training clock (resumed runs included, as :func:`train_teacher`).
    """
    last = os.path.join(root, "checkpoints", "last.ckpt")
    marker = _done_marker(root)
    settings = {"recipe": os.path.abspath(recipe), "args": list(args), "seed": seed, "teacher": os.path.abspath(teacher)}
    if os.path.isfile(marker) and os.path.isfile(last):
        info = _finished_run(marker, settings)
        return dict(info["students"]), float(info["seconds"])
    extra = ["--ckpt_path", last] if os.path.isfile(last) else []
    cli = run_distill(["--config", recipe, "--teacher", teacher, "--trainer.default_root_dir", root,
                       "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false", *args, *extra])
    sec = _fit_seconds(cli)
    students = {os.path.splitext(os.path.basename(f))[0]: f for f in cli.model.exported}
    students["last"] = last
    _write_json(marker, {"seconds": sec, **settings, "students": students, "method": cli.model.method_name})
    return students, sec


def fine_tune_snapshots(recipe: str, root: str, *, teacher: str, seed: int, args: list[str], snapshots: dict,
                        steps=(4, 2, 1), log=print) -> tuple[dict, float]:
    """Endpoint-distil each progressive snapshot ``progressive_N{k}`` (``k`` in ``steps``) of a finished stage.

    One run of ``recipe`` (an :class:`~flowgen.lightning.distill.EndpointDistillModule` recipe) per
    ``k`` into ``<root>/N{k}``, all sharing the teacher's pairs in ``<root>/pairs`` (generated once);
    finished runs are reused as :func:`distill_student`'s.

    Returns:
        ``({"endpoint_N{k}": file}, seconds)``, the seconds summed over the runs (pair generation included).

    Raises:
        ValueError: a requested ``k`` without its ``progressive_N{k}`` snapshot.
    """
    missing = [k for k in steps if f"progressive_N{k}" not in snapshots]
    if missing:
        have = sorted(k for k in snapshots if k.startswith("progressive_N"))
        raise ValueError(f"no progressive snapshot for N in {missing} to fine-tune (the stage exported {have})")
    out, total = {}, 0.0
    for k in steps:
        more = ["--model.init_args.student_checkpoint", snapshots[f"progressive_N{k}"],
                "--model.init_args.pair_dir", os.path.join(root, "pairs")]
        files, sec = distill_student(recipe, os.path.join(root, f"N{k}"), teacher=teacher, seed=seed, args=list(args) + more)
        log(f"  endpoint distillation N={k}: {sec:.1f} s")
        out[f"endpoint_N{k}"] = files[f"endpoint_N{k}"]
        total += sec
    return out, total


def _snapshot_plan(name: str, students: dict, student_steps) -> list[tuple[str, str, list[int] | None]]:
    """Which snapshot to evaluate at which steps: ``[(label, file, steps)]``."""
    plan = []
    ends = sorted(((int(k.split("_N")[1]), f) for k, f in students.items() if k.startswith("endpoint_N")), reverse=True)
    if ends:
        return [(f"{name} N={n}", f, [n]) for n, f in ends]
    prog = sorted(((int(k.split("_N")[1]), f) for k, f in students.items() if k.startswith("progressive_N")), reverse=True)
    if prog:
        for n, f in prog:
            if n <= 8:
                plan.append((f"{name} N={n}", f, [n]))
        return plan
    if "reflow_distilled" in students:
        rounds = sorted(k for k in students if k.startswith("reflow_round"))
        for k in rounds:
            plan.append((f"{name} {k.replace('reflow_', '')}", students[k], list(student_steps or [1, 2, 4])))
        plan.append((f"{name} distilled", students["reflow_distilled"], [1]))
        return plan
    f = next((v for k, v in students.items() if k != "last"), students.get("last"))
    plan.append((name, f, None if student_steps is None else list(student_steps)))
    return plan


def run_report(config: str, *, out: str | None = None, steps_scale: float | None = None, log=print) -> dict:
    """Train the teacher, distil it with every student recipe, evaluate and write the report.

    Returns:
        The report as a dict (also written to ``<out>/report.json``).
    """
    import torch

    from .checkpoint import load_generator
    from .lightning.distill import load_student

    cfg = _read_report_config(config)
    cdir = os.path.dirname(os.path.abspath(config))
    out = os.path.abspath(out or cfg.get("out") or "flowgen_runs/distill_report")
    seed = int(cfg.get("seed", 0))
    ev = cfg.get("evaluation") or {}
    t_start = time.perf_counter()

    teacher_recipe = _resolve_file(cfg["teacher"]["recipe"], cdir)
    targs = _scaled_steps(_as_args(cfg["teacher"].get("args"), "teacher.args"), steps_scale)
    log(f"[report] teacher: {teacher_recipe} → {os.path.join(out, 'teacher')}")
    teacher_ckpt, teacher_s = train_teacher(teacher_recipe, os.path.join(out, "teacher"), seed=seed, args=targs)
    log(f"[report] teacher trained in {teacher_s:.1f} s: {teacher_ckpt}")

    students, times = {}, {}
    for s in cfg["students"]:
        recipe = _resolve_file(s["recipe"], cdir)
        sargs = _scaled_steps(_as_args(s.get("args"), f"students[{s['name']}].args"), steps_scale)
        log(f"[report] {s['name']}: {recipe}")
        if "of" in s:  # endpoint distillation of an earlier stage's progressive snapshots; its time includes that stage's
            files, sec = fine_tune_snapshots(recipe, os.path.join(out, s["name"]), teacher=teacher_ckpt, seed=seed, args=sargs,
                                             snapshots=students[s["of"]], steps=tuple(s.get("steps", (4, 2, 1))), log=log)
            students[s["name"]], times[s["name"]] = files, times[s["of"]] + sec
        else:
            students[s["name"]], times[s["name"]] = distill_student(recipe, os.path.join(out, s["name"]), teacher=teacher_ckpt,
                                                                   seed=seed, args=sargs)
        log(f"[report] {s['name']} distilled in {times[s['name']]:.1f} s")

    teacher, path, prediction, meta = load_generator(teacher_ckpt)
    protocol = make_protocol(meta, num=int(ev.get("num_samples", 2000)), repeats=int(ev.get("repeats", 1)), seed=seed)
    log(f"[report] evaluating ({protocol.metric}, {protocol.repeats} × {protocol.noises[0].shape[0]} samples, "
        f"floor {protocol.floor:.4g})")
    ref, ref_row = reference_samples(teacher, path, prediction, protocol)
    entries = teacher_entries(teacher, path, prediction, euler=tuple(ev.get("teacher_euler_steps", (1, 2, 4, 8, 16, 32))),
                              heun=tuple(ev.get("teacher_heun_steps", (2, 4, 8))))
    rows = [ref_row] + evaluate_entries(entries, protocol, reference=ref, count_model=teacher)
    noise0 = protocol.noises[0]
    shown = {"teacher dopri5": ref[0]}
    for e in entries:
        if e.sampler == "euler" and e.steps in (1, 4):
            shown[f"teacher euler {e.steps}"] = e.fn(noise0, 0)
    for name, snaps in students.items():
        for label, file, steps in _snapshot_plan(name, snaps, ev.get("student_steps")):
            gen = load_student(file)
            srows = evaluate_entries(student_entries(label, gen, steps, seed=seed), protocol, reference=ref)
            for r in srows:
                r["group"] = name
                r["train_seconds"] = times[name]
                r["checkpoint"] = file
            rows += srows
            # samples figure: each student at its fewest steps (progressive: N = 1; reflow: the distilled student)
            ks = [r["steps"] for r in srows]
            if ks and min(ks) == 1 and "round" not in label:
                shown[f"{label} 1 step"] = gen.sample(noise0, steps=1, generator=torch.Generator().manual_seed(seed))
    floor = protocol.floor
    with_ratios(rows, floor, floors=protocol.floors)
    for r in rows:
        r["time_vs_teacher_training"] = (r["train_seconds"] / teacher_s) if r.get("train_seconds") else None

    figures = os.path.join(out, "figures")
    series = []
    from .viz import COLORS

    def pick(pred):
        return [r for r in rows if pred(r)]

    eul = pick(lambda r: r["group"] == "teacher_euler")
    series.append(("teacher euler", [r["nfe"] for r in eul], [r["d"] for r in eul], (0.55, 0.55, 0.55), False))
    heu = pick(lambda r: r["group"] == "teacher_heun")
    if heu:
        series.append(("teacher heun", [r["nfe"] for r in heu], [r["d"] for r in heu], (0.3, 0.3, 0.3), False))
    ref_row = pick(lambda r: r["group"] == "teacher_reference")[0]
    series.append((f"teacher dopri5 ({ref_row['nfe']})", [ref_row["nfe"]], [ref_row["d"]], (0.0, 0.0, 0.0), True))
    for j, name in enumerate(students):
        sr = sorted(pick(lambda r, n=name: r["group"] == n and "round" not in r["model"]), key=lambda r: r["nfe"])
        series.append((name.replace("_", " "), [r["nfe"] for r in sr], [r["d"] for r in sr], COLORS[(2 + j) % len(COLORS)], False))
    hl = [("teacher dopri5", ref_row["d"], (0.0, 0.0, 0.0))]
    if math.isfinite(floor):
        hl.append(("data floor", floor, (0.7, 0.2, 0.2)))
    plot = line_plot_png(os.path.join(figures, "quality_vs_nfe.png"), series, hlines=hl,
                         title="quality vs NFE", ylabel="W2 SQ" if protocol.metric == "w2" else "FD")
    ref_data = protocol.refs[0]
    fig = samples_figure(os.path.join(figures, "samples.png"), list(shown.items()), reference=ref_data)

    cols = [("model", "model"), ("sampler", "sampler"), ("steps", "steps"), ("nfe", "NFE"), ("d", "d"),
            ("R", "R_k"), ("R_se", "R_k eval se"), ("rms_to_reference", "RMS to teacher"), ("samples_per_s", "samples/s"),
            ("time_vs_teacher_training", "train time / teacher's")]
    table = format_markdown_table(rows, cols)
    total = time.perf_counter() - t_start
    md = [f"# flowgen distillation report", "",
          f"teacher `{teacher_ckpt}` ({meta.get('path', {}).get('name', meta.get('path'))}, prediction {meta.get('prediction')}), "
          f"trained in {teacher_s:.1f} s. d = {'squared W2' if protocol.metric == 'w2' else 'digits Fréchet distance'} "
          f"between {protocol.noises[0].shape[0]} samples and held-out data (mean of {protocol.repeats}); "
          f"floor = {floor:.4g} (two independent data draws); R_k = (d − floor)/(d(teacher dopri5) − floor).", "",
          table, "", f"![quality vs NFE](figures/{os.path.basename(plot)})", ""]
    if fig:
        md.append(f"![samples](figures/{os.path.basename(fig)})")
    md += ["", f"report written in {total:.0f} s"]
    report = {"teacher": teacher_ckpt, "teacher_seconds": teacher_s, "students": students, "student_seconds": times,
              "floor": floor, "metric": protocol.metric, "rows": [{k: v for k, v in r.items()} for r in rows],
              "figures": {"quality_vs_nfe": plot, "samples": fig}, "seconds": total}
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    _write_json(os.path.join(out, "report.json"), report)
    log(table)
    log(f"[report] wrote {os.path.join(out, 'report.md')}, report.json and figures/ in {total:.0f} s")
    return report


def _cmd_report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flowgen distill report",
                                description="Train a teacher, distil it with every method and write a report.")
    p.add_argument("--config", required=True, help="report config (recipes/distill/report_*.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--max-steps-scale", type=float, default=None,
                   help="multiply every *steps override of the config (e.g. 0.1 for a quick look)")
    args = p.parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        if args.max_steps_scale is not None and not args.max_steps_scale > 0:
            raise ValueError(f"--max-steps-scale must be > 0, got {args.max_steps_scale}")
        run_report(args.config, out=args.out, steps_scale=args.max_steps_scale)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    except (CheckpointError, ValueError, TypeError, FileNotFoundError, FloatingPointError) as err:
        return _fail("flowgen distill report", err)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``flowgen distill`` (``argv`` without the ``distill`` word)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return _cmd_report(argv[1:])
    return _cmd_distill(argv)


if __name__ == "__main__":
    sys.exit(main())
