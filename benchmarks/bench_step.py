"""Step time and memory of a JEM training step against the plain classifier step, in one process.

For each configuration (network, input shape, batch, K, device, precision) it times, after a
warm-up, many repeats of

  (a) a plain classifier training step       Trainer(train.clf_only=true).train_step
  (b) a JEM training step with K SGLD steps  Trainer.train_step: buffer draw, K SGLD steps,
      buffer write-back, one forward/backward over data and samples together, Adam step
  (c) one SGLD step alone                    SGLD.step under frozen_eval, as inside SGLD.run

interleaved in rounds (4 x a, 1 x b, 4 x c) so that a change in machine load hits all three
alike. It prints the ratio b/a beside the work-count estimate (6 + 2K) / 3 (a forward, a
backward to the input and a backward to the weights each counted as one forward F) and beside
the same ratio in FLOPs counted on the real steps (torch.utils.flop_counter's formulas), and
the peak memory of (a) and (b).

Memory: the peak of tensor memory allocated during the step above what was allocated before
it, with the old gradients freed first, i.e. activations + gradients + temporaries. Weights,
optimiser state and replay buffer persist between steps; they are ``state_mb`` in the JSON.
CUDA: torch.cuda.max_memory_allocated. CPU: the allocation and free events recorded by
torch.profiler(profile_memory=True), summed in time order: a count of tensor bytes, not the
process's resident set size (which also holds the allocator's cache and the libraries).

Timing. CPU: perf_counter (wall) and thread_time (the main thread's CPU time) around each
step; ``--clock cpu`` reports the latter, which other processes on a shared machine inflate
much less, and which is the whole step time only with one thread (``--threads 1``). CUDA: a
pair of CUDA events around each step and one synchronisation after the timed block, so that
the host runs ahead as in training; a JEM step is also run under
torch.cuda.set_sync_debug_mode("warn") and its host synchronisations counted.

    python benchmarks/bench_step.py                      # the device's default configurations
    python benchmarks/bench_step.py --preset digits --threads 1 --clock cpu --repeats 150
    python benchmarks/bench_step.py --device cuda --amp bf16 --channels-last --peak-tflops 989
    python benchmarks/bench_step.py --quick --json /tmp/bench.json   # seconds; the CI check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from torchjem import Trainer, load_config
from torchjem.data import DataSplits
from torchjem.speed import autocast
from torchjem.utils import frozen_eval


@dataclass
class Preset:
    """One benchmark configuration: a registered net, its options, the input shape, batch and K."""

    net: str
    net_kwargs: dict[str, Any]
    shape: tuple[int, ...]
    batch: int = 64
    K: int = 20
    n_classes: int = 10
    repeats: int = 40  # rounds; each times 1 JEM step, ``per_round`` classifier and SGLD steps
    note: str = ""


PRESETS: dict[str, Preset] = {
    # The demo's network on 8x8 digits (torchjem/configs/digits_demo.yaml).
    "digits": Preset("convnet", {"width": 32}, (1, 8, 8), note="digits demo net"),
    # A small Wide-ResNet that a 2-core CPU times in a minute.
    "wrn-small": Preset("wrn", {"depth": 10, "width": 2}, (3, 16, 16), batch=32, repeats=10, note="WRN-10-2"),
    # The paper's CIFAR-10 network and step (CUDA).
    "wrn-28-10": Preset("wrn", {"depth": 28, "width": 10}, (3, 32, 32), repeats=30, note="WRN-28-10 (paper)"),
    # CI-sized: a tiny net, short chains.
    "tiny": Preset("convnet", {"width": 8}, (1, 8, 8), batch=16, K=3, repeats=2, note="quick check"),
}
DEFAULTS = {"cpu": ["digits", "wrn-small"], "cuda": ["wrn-28-10"]}


@dataclass
class Options:
    """How to run the configurations (shared by all of them)."""

    device: str = "cpu"
    repeats: int | None = None  # None: the preset's
    warmup: int = 3
    per_round: int = 4
    overrides: list[str] = field(default_factory=list)  # config overrides, e.g. train.amp=bf16
    unfused: bool = False  # optimiser without fused kernels (torchjem's CPU default before 0.1)
    clock: str = "wall"  # CPU: wall | cpu
    memory: bool = True
    flops: bool = True
    peak_tflops: float | None = None  # the device's peak, for model FLOP utilisation


def work_ratio(k: int) -> float:
    """JEM step / classifier step in forward-pass units: (6 + 2K) / 3."""
    return (6 + 2 * k) / 3


def _synthetic_data(p: Preset, n: int) -> DataSplits:
    """Random images in [-1, 1] with random labels (step time does not depend on the pixels)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, *p.shape), generator=g) * 2 - 1
    y = torch.randint(0, p.n_classes, (n,), generator=g)
    return DataSplits("synthetic", x, y, x[:0], y[:0], x[:0], y[:0], p.n_classes)


def build_trainer(p: Preset, opt: Options, clf_only: bool) -> Trainer:
    """The Trainer the library builds for this configuration (it writes nothing)."""
    kwargs = ", ".join(f"{k}: {v}" for k, v in p.net_kwargs.items())
    overrides = [
        f"net.name={p.net}",
        f"net.kwargs={{{kwargs}}}",
        f"sgld.steps={p.K}",
        f"train.batch_size={p.batch}",
        f"train.clf_only={clf_only}",
        "buffer.size=10000",
        "optim.warmup_iters=0",
        f"device={opt.device}",
        *opt.overrides,
    ]
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, overrides)
        trainer = Trainer(cfg, data=_synthetic_data(p, 4 * p.batch), progress=False, out=out)
    if opt.unfused:
        o = cfg.optim
        params = [q for q in trainer.jem.parameters() if q.requires_grad]
        if o.name == "adam":
            trainer.optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        else:
            trainer.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return trainer


class Timer:
    """Per-call times (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn: Callable[[], Any]) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.pending.append((start, end))
        else:
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.thread_time() - c0)

    def collect(self, clock: str = "wall") -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            self.wall += [s.elapsed_time(e) / 1000 for s, e in self.pending]
            self.pending = []
            return self.wall
        return self.cpu if clock == "cpu" else self.wall


def summary(times: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max of a list of seconds."""
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "q1": q[0], "q3": q[2], "min": min(times), "max": max(times)}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak tensor bytes allocated by ``fn`` above the level before it.

    On CPU only blocks allocated inside ``fn`` are seen (the profiler records no size for frees
    of older blocks), so callers free what the step would free (the old gradients) first."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def count_flops(fn: Callable[[], Any]) -> int | None:
    """FLOPs of one call, by torch.utils.flop_counter's formulas (matmuls and convolutions).

    Counted in a bare dispatch mode: FlopCounterMode's module tracker installs backward hooks
    that torch.autograd.grad (the SGLD step) does not support."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry
    except ImportError:  # private API moved: no FLOP count, the timings stand
        return None

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += formula(*args, **kwargs, out_val=out)
            return out

    with Count():
        fn()
    return Count.total


def count_syncs(fn: Callable[[], Any]) -> int:
    """Host-device synchronisations in one call of ``fn`` (CUDA only)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), its core count and its vector capability."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


def state_bytes(tr: Trainer) -> int:
    """Weights, optimiser state and replay buffer: what stays allocated between steps."""
    n = sum(q.numel() * q.element_size() for q in tr.jem.parameters())
    for s in tr.optimizer.state.values():
        n += sum(v.numel() * v.element_size() for v in s.values() if isinstance(v, torch.Tensor))
    if tr.buffer is not None:
        n += tr.buffer.x.numel() * tr.buffer.x.element_size()
    return n


def bench(p: Preset, opt: Options) -> dict[str, Any]:
    """Time (a) a classifier step, (b) a JEM step, (c) an SGLD step for one configuration."""
    clf, jem = build_trainer(p, opt, True), build_trainer(p, opt, False)
    dev, amp = jem.device, jem.cfg.train.amp
    repeats = opt.repeats or p.repeats
    epoch = jem.batches.epoch(0)
    batches = [next(epoch) for _ in range(4)]
    chain = {"x": jem.buffer.draw(p.batch)[0], "i": 0}

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        chain["i"] += 1
        return batches[chain["i"] % len(batches)]

    def clf_step() -> None:
        clf.train_step(*batch())

    def jem_step() -> None:
        jem.train_step(*batch())

    def sgld_step() -> None:
        chain["x"] = jem.sampler.langevin.step(jem.jem, chain["x"])

    def sgld_block(timer: Callable[[Callable[[], Any]], None] | None, n: int) -> None:
        # Entered once per block, as SGLD.run enters it once per chain.
        with frozen_eval(jem.jem), torch.enable_grad(), autocast(amp, dev):
            for _ in range(n):
                if timer is None:
                    sgld_step()
                else:
                    timer(sgld_step)

    t0 = time.perf_counter()
    for _ in range(opt.warmup):  # first calls: allocator, cuDNN autotuning, compilation
        clf_step(), jem_step(), sgld_block(None, 1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0

    tc, tj, ts = Timer(dev), Timer(dev), Timer(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in range(opt.per_round):
            tc(clf_step)
        tj(jem_step)
        sgld_block(ts, opt.per_round)
    clock = opt.clock if dev.type == "cpu" else "cuda events"
    c, j, s = (summary(t.collect(opt.clock)) for t in (tc, tj, ts))
    timed_wall_s = time.perf_counter() - t0

    rec: dict[str, Any] = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "net": p.net,
        "net_kwargs": p.net_kwargs,
        "note": p.note,
        "shape": list(p.shape),
        "batch": p.batch,
        "K": p.K,
        "amp": amp,
        "channels_last": jem.cfg.train.channels_last,
        "compile": jem.cfg.train.compile,
        "fused_optimizer": bool(jem.optimizer.defaults.get("fused")),
        "overrides": opt.overrides,
        "threads": torch.get_num_threads(),
        "clock": clock,
        "repeats": {"clf": len(tc.wall), "jem": len(tj.wall), "sgld": len(ts.wall)},
        "clf_step_s": c["median"],
        "jem_step_s": j["median"],
        "sgld_step_s": s["median"],
        "clf": c,
        "jem": j,
        "sgld": s,
        "ratio": j["median"] / c["median"],
        "work_ratio": work_ratio(p.K),
        "sgld_ratio": s["median"] / c["median"],  # work count: 2/3
        "chain_share": p.K * s["median"] / j["median"],  # part of the JEM step spent in its K SGLD steps
        "jem_ms_per_step": 1e3 * j["median"],
        "jem_images_per_s": p.batch / j["median"],
        "clf_images_per_s": p.batch / c["median"],
        "warmup_s": warmup_s,
        "timed_wall_s": timed_wall_s,
    }
    rec["ratio_over_work"] = rec["ratio"] / rec["work_ratio"]
    if dev.type == "cpu":  # the other clock, for comparison
        other = "wall" if opt.clock == "cpu" else "cpu"
        rec["other_clock"] = {"clock": other, **{k: summary(t.collect(other)) for k, t in zip("cjs", (tc, tj, ts))}}
    if opt.flops:
        fc, fj = count_flops(clf_step), count_flops(jem_step)
        rec.update(clf_flops=fc, jem_flops=fj, flop_ratio=fj / fc if fc and fj else None)
        rec["jem_tflops_per_s"] = fj / j["median"] / 1e12 if fj else None
        rec["clf_tflops_per_s"] = fc / c["median"] / 1e12 if fc else None
        if opt.peak_tflops and fj:
            rec["jem_mfu"] = rec["jem_tflops_per_s"] / opt.peak_tflops
            rec["clf_mfu"] = rec["clf_tflops_per_s"] / opt.peak_tflops
    if dev.type == "cuda":
        rec["jem_step_host_syncs"] = count_syncs(jem_step)
    if opt.memory:
        clf.optimizer.zero_grad(set_to_none=True)
        rec["clf_peak_mb"] = peak_extra_bytes(clf_step, dev) / 2**20
        jem.optimizer.zero_grad(set_to_none=True)
        rec["jem_peak_mb"] = peak_extra_bytes(jem_step, dev) / 2**20
        rec["state_mb"] = {"clf": state_bytes(clf) / 2**20, "jem": state_bytes(jem) / 2**20}
        rec["memory_method"] = (
            "torch.cuda.max_memory_allocated above the level before the step"
            if dev.type == "cuda"
            else "torch.profiler allocation events: peak tensor bytes above the level before the step"
        )
    return rec


def format_table(records: list[dict[str, Any]]) -> str:
    head = (
        f"{'config':<24}{'device':<7}{'amp':<5}{'batch':>6}{'K':>4}{'clf ms':>20}{'jem ms':>22}{'sgld ms':>9}"
        f"{'b/a':>7}{'(6+2K)/3':>10}{'flops':>7}{'clf MB':>8}{'jem MB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        c, j = r["clf"], r["jem"]
        name = f"{r['net']} {','.join(f'{k}={v}' for k, v in r['net_kwargs'].items())}"[:23]
        lines.append(
            f"{name:<24}{r['device']:<7}{r['amp']:<5}{r['batch']:>6}{r['K']:>4}"
            f"{c['median'] * 1e3:>9.2f} [{c['q1'] * 1e3:.2f},{c['q3'] * 1e3:.2f}]"
            f"{j['median'] * 1e3:>10.1f} [{j['q1'] * 1e3:.1f},{j['q3'] * 1e3:.1f}]"
            f"{r['sgld_step_s'] * 1e3:>9.2f}{r['ratio']:>7.2f}{r['work_ratio']:>10.2f}"
            f"{r.get('flop_ratio') or float('nan'):>7.2f}"
            f"{r.get('clf_peak_mb', float('nan')):>8.1f}{r.get('jem_peak_mb', float('nan')):>8.1f}"
        )
    clock = records[0]["clock"] if records else ""
    lines.append(f"ms: median [interquartile range], clock: {clock}; b/a: JEM step / classifier step;")
    lines.append("flops: b/a in counted FLOPs; MB: peak tensor memory of the step (activations, gradients,")
    lines.append("temporaries; weights, optimiser state and replay buffer excluded: state_mb in the JSON)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[list[Preset], Options, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--preset", action="append", choices=sorted(PRESETS), help="repeatable; default per device")
    ap.add_argument("--net", help="a custom configuration: a registered net name (with --shape)")
    ap.add_argument("--net-kwargs", default="{}", help="JSON, e.g. '{\"width\": 32}'")
    ap.add_argument("--shape", help="input shape of the custom configuration, e.g. 3,32,32")
    ap.add_argument("--batch", type=int, help="override the batch size")
    ap.add_argument("--K", type=int, help="override the SGLD steps per JEM step")
    ap.add_argument("--repeats", type=int, help="rounds (timed JEM steps); default per preset")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=4, help="classifier and SGLD steps timed per round")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"], help="train.amp")
    ap.add_argument("--channels-last", action="store_true", help="train.channels_last=true")
    ap.add_argument("--compile", action="store_true", help="train.compile=true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    ap.add_argument("--unfused", action="store_true", help="optimiser without fused kernels (the old CPU default)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="CPU clock; cpu needs --threads 1")
    ap.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for MFU, e.g. 989 for H100 SXM bf16")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny configuration, few repeats: seconds")
    ap.add_argument("--json", help="write the records (and a description of the machine) to this file")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        ap.error("--clock cpu times the calling thread only: use it with --threads 1")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {device}: CUDA is not available")
    if args.net:
        if not args.shape:
            ap.error("--net needs --shape")
        shape = tuple(int(s) for s in args.shape.split(","))
        presets = [Preset(args.net, json.loads(args.net_kwargs), shape, note="custom")]
    else:
        names = args.preset or (["tiny"] if args.quick else DEFAULTS["cuda" if device.startswith("cuda") else "cpu"])
        presets = [PRESETS[n] for n in names]
    presets = [replace(p, batch=args.batch or p.batch, K=p.K if args.K is None else args.K) for p in presets]
    overrides = [f"train.amp={args.amp}", f"train.channels_last={args.channels_last}", f"train.compile={args.compile}"]
    opt = Options(
        device=device,
        repeats=args.repeats or (2 if args.quick else None),
        warmup=1 if args.quick else args.warmup,
        per_round=args.per_round,
        overrides=overrides + args.set,
        unfused=args.unfused,
        clock=args.clock,
        memory=not args.no_memory,
        flops=not args.no_flops,
        peak_tflops=args.peak_tflops,
    )
    return presets, opt, args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    presets, opt, args = parse_args(argv)
    records = []
    for p in presets:
        rounds = opt.repeats or p.repeats
        print(f"# {p.net} {p.net_kwargs} {p.shape} batch {p.batch} K {p.K} on {opt.device}: {rounds} rounds")
        records.append(bench(p, opt))
    print(format_table(records))
    if args.json:
        meta = {
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "argv": sys.argv[1:] if argv is None else argv,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "records": records}, f, indent=1)
        print(f"wrote {args.json}")
    return records


if __name__ == "__main__":
    main()
