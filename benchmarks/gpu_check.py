"""Every GPU check in one call, for the minutes a GPU is at hand (`make gpu-check`).

1. the CUDA-only tests (pytest marker ``cuda``);
2. the step benchmark at the paper's scale (benchmarks/bench_step.py: WRN-28-10, K = 20, batch 64)
   in fp32 and bf16, with channels_last, with and without torch.compile: ms per step, b/a, images/s,
   TFLOP/s, peak memory, host synchronisations per JEM step;
3. a DDP smoke run over NCCL: one process (a process group of one, a batch-norm JEM through
   torchjem's DDP wrapper, an all-reduce) and, with more than one GPU visible, ``jem train`` under
   torchrun on every GPU (a batch-norm WRN with ``train.sync_bn``);
4. a short CIFAR-shaped run (3x32x32, synthetic data) of the SADA-JEM recipe (WRN-28-10 with batch
   norm, ASAM, train-mode chains).

It writes OUT/gpu_check.json (every figure) and OUT/summary.txt (a few lines), and prints the
summary. Each step runs in its own process where a crash or a compile could take the others down,
under one time budget (``--budget-s``, default 480 s): a step that would start past it is recorded
as skipped. On a machine without a GPU it prints "no GPU", runs nothing and exits 0.

    python benchmarks/gpu_check.py --out gpu_check            # on a GPU machine
    python benchmarks/gpu_check.py --force-cpu --quick --out /tmp/gc   # the same code paths on CPU, in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_step.py"
SCHEMA = 1
CHECKS = ("cuda_tests", "step_benchmark", "ddp", "sada_run")
# (name, train.amp, channels_last, compile) of the benchmark's variants, in the order they run
VARIANTS = [
    ("fp32", "none", False, False),
    ("bf16", "bf16", False, False),
    ("bf16 channels_last", "bf16", True, False),
    ("fp32 compile", "none", False, True),
    ("bf16 channels_last compile", "bf16", True, True),
]
NO_GPU = "no GPU: torch.cuda.is_available() is False (torch {torch}); nothing was run"


class Budget:
    """Seconds left of the whole check."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, the output's last 4000 characters, seconds)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), cwd=ROOT,
                           env={**os.environ, **(env or {})})
        return p.returncode, (p.stdout + p.stderr)[-4000:], time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out[-4000:], time.monotonic() - t0


# -- 1. the CUDA-only tests ------------------------------------------------------------------------
def cuda_tests(budget: Budget, tmp: Path) -> dict[str, Any]:
    xml = tmp / "cuda_tests.xml"
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    code, out, secs = _run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={xml}", *files], budget.left())
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures: list[str] = []
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                failures.append(f"{case.get('classname')}::{case.get('name')}")
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    status = "timeout" if code is None else ("ok" if code in (0, 5) and not counts["failed"] else "failed")
    return {"status": status, **counts, "failures": failures, "seconds": secs, "output": out if status != "ok" else ""}


# -- 2. the step benchmark -------------------------------------------------------------------------
def variant_args(amp: str, channels_last: bool, compile_: bool, device: str, quick: bool) -> list[str]:
    args = ["--device", device, "--amp", amp]
    args += ["--quick"] if quick else ["--preset", "wrn-28-10", "--repeats", "10", "--warmup", "3"]
    if channels_last:
        args.append("--channels-last")
    if compile_:
        args.append("--compile")
    return args


def bench_record(name: str, amp: str, channels_last: bool, compile_: bool, rec: dict[str, Any]) -> dict[str, Any]:
    """The figures of one variant from bench_step's record."""
    return {
        "name": name, "amp": amp, "channels_last": channels_last, "compile": compile_, "status": "ok",
        "net": f"{rec['net']} {rec['net_kwargs']}", "shape": rec["shape"], "batch": rec["batch"], "K": rec["K"],
        "device_name": rec["device_name"],
        "clf_ms": 1e3 * rec["clf_step_s"], "jem_ms": 1e3 * rec["jem_step_s"], "sgld_ms": 1e3 * rec["sgld_step_s"],
        "ratio": rec["ratio"], "work_ratio": rec["work_ratio"], "jem_images_per_s": rec["jem_images_per_s"],
        "jem_tflops_per_s": rec.get("jem_tflops_per_s"), "clf_peak_mb": rec.get("clf_peak_mb"),
        "jem_peak_mb": rec.get("jem_peak_mb"), "host_syncs": rec.get("jem_step_host_syncs"),
    }


def step_benchmark(budget: Budget, tmp: Path, device: str, quick: bool) -> dict[str, Any]:
    variants, t0 = [], time.monotonic()
    for name, amp, cl, comp in VARIANTS:
        if quick and comp:  # torch.compile on CPU takes minutes: not part of the CPU rehearsal
            variants.append({"name": name, "status": "skipped", "error": "--quick: no torch.compile"})
            continue
        if budget.left() < 30:
            variants.append({"name": name, "status": "skipped", "error": "time budget spent"})
            continue
        path = tmp / f"bench_{len(variants)}.json"
        code, out, secs = _run([sys.executable, str(BENCH), *variant_args(amp, cl, comp, device, quick),
                                "--json", str(path)], budget.left() - 10)
        if code == 0 and path.is_file():
            rec = json.loads(path.read_text())["records"][0]
            variants.append({**bench_record(name, amp, cl, comp, rec), "seconds": secs})
        else:
            status = "timeout" if code is None else "failed"
            variants.append({"name": name, "status": status, "seconds": secs, "error": out[-1500:]})
    ok = [v for v in variants if v["status"] == "ok"]
    failed = any(v["status"] in ("failed", "timeout") for v in variants)
    return {"status": "failed" if failed else ("ok" if ok else "skipped"), "seconds": time.monotonic() - t0,
            "variants": variants}


# -- 3. DDP over NCCL ------------------------------------------------------------------------------
def ddp_worker() -> None:
    """Inside torchrun: a process group (NCCL on GPUs, gloo on CPU) even of one process, a batch-norm
    JEM through torchjem's DDP wrapper (data and sample passes in one forward), an all-reduce."""
    import torch.distributed as dist

    from torchjem.energy import JEM
    from torchjem.nets import create_net
    from torchjem.objective import Batch, HybridObjective
    from torchjem.training import distributed as ddp

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available() and os.environ.get("GPU_CHECK_CPU") != "1"
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    torch.manual_seed(0)
    jem = JEM(create_net("wrn", depth=10, width=2, in_channels=3, norm="batch")).to(device)
    model = ddp.wrap_ddp(ddp.convert_sync_batch_norm(jem), device)
    x, y = torch.rand(8, 3, 32, 32, device=device) * 2 - 1, torch.randint(0, 10, (8,), device=device)
    x_q = torch.rand(8, 3, 32, 32, device=device) * 2 - 1
    objective = HybridObjective(None, px=0.0, separate_passes=True)
    objective.px = 1.0  # (the loss of a given Batch needs no sampler)
    loss, _ = objective.loss(model, Batch(x, y, None, x_q, None, None))
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in jem.parameters() if p.grad is not None])
    total = torch.tensor([1.0], device=device)
    dist.all_reduce(total)
    same = torch.tensor([grad.norm().item()], device=device)
    spread = same.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    ok = total.item() == world and torch.isfinite(loss).item() and spread.item() == same.item()
    if rank == 0:
        print(json.dumps({"gpu_check_ddp": {"world_size": world, "backend": str(dist.get_backend()),
                                            "loss": loss.item(), "grad_norm": same.item(), "ok": bool(ok)}}))
    dist.destroy_process_group()


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def ddp_check(budget: Budget, tmp: Path, n_gpus: int, cpu: bool) -> dict[str, Any]:
    runs, t0 = [], time.monotonic()
    env = {"OMP_NUM_THREADS": "1", **({"GPU_CHECK_CPU": "1"} if cpu else {})}
    nprocs = [1] + ([n_gpus] if n_gpus > 1 else [])
    for n in nprocs:
        code, out, secs = _run([*_torchrun(), f"--nproc_per_node={n}", str(Path(__file__).resolve()),
                                "--ddp-worker"], min(120.0, budget.left()), env)
        line = next((x for x in out.splitlines() if x.startswith('{"gpu_check_ddp"')), None)
        found = json.loads(line)["gpu_check_ddp"] if line else {}
        ok = code == 0 and found.get("ok", False)
        runs.append({"what": "DDP wrapper + all-reduce", "nproc": n, "status": "ok" if ok else "failed",
                     "seconds": secs, **found, **({} if ok else {"error": out[-1500:]})})
    if n_gpus > 1 and budget.left() > 60:  # the trainer itself on every GPU
        out_dir = tmp / "ddp_train"
        code, out, secs = _run([*_torchrun(), f"--nproc_per_node={n_gpus}", "-m", "torchjem.cli", "train",
                                "--config", "sadajem_cifar10", "data.name=digits", "data.val_size=0.1",
                                "net.kwargs.depth=10", "net.kwargs.width=2", "train.max_steps=20", "train.sync_bn=true",
                                f"train.batch_size={8 * n_gpus}", "buffer.size=1000", "--device=cuda",
                                f"--out={out_dir}", "--quiet"], min(240.0, budget.left()), env)
        runs.append({"what": "jem train, SADA-JEM options, sync_bn", "nproc": n_gpus, "seconds": secs,
                     "status": "ok" if code == 0 else "failed", **({} if code == 0 else {"error": out[-1500:]})})
    failed = any(r["status"] != "ok" for r in runs)
    return {"status": "failed" if failed else "ok", "seconds": time.monotonic() - t0, "runs": runs}


# -- 4. a short SADA-JEM run -----------------------------------------------------------------------
def sada_worker(out: str, quick: bool, cpu: bool) -> None:
    """One short run of the SADA-JEM recipe on CIFAR-shaped synthetic data; prints its figures."""
    from torchjem import Trainer, load_config
    from torchjem.data import DataSplits

    device = "cpu" if cpu else "cuda"
    g = torch.Generator().manual_seed(0)
    n = 256 if quick else 4096
    x = torch.rand((n, 3, 32, 32), generator=g) * 2 - 1
    y = torch.randint(0, 10, (n,), generator=g)
    data = DataSplits("synthetic", x[: n - 128], y[: n - 128], x[n - 128 :], y[n - 128 :], x[:0], y[:0], 10)
    steps = 4 if quick else 100
    overrides = [f"device={device}", f"train.max_steps={steps}", "train.log_every=2" if quick else "train.log_every=10",
                 "buffer.size=1000", "optim.warmup_iters=10"]
    if quick:
        overrides += ["net.kwargs.depth=10", "net.kwargs.width=1", "train.batch_size=16", "sgld.steps=2"]
    cfg = load_config("sadajem_cifar10", overrides)
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    t = Trainer(cfg, data=data, progress=False, out=out)
    t0 = time.monotonic()
    result = t.fit()
    secs = time.monotonic() - t0
    windows = [r for r in t.run.read_metrics() if "loss" in r]
    fig = {
        "net": f"wrn {cfg.net.kwargs}", "batch": cfg.train.batch_size, "K": cfg.sgld.steps, "steps": result["step"],
        "seconds": secs, "steps_per_s": result["step"] / secs, "final_loss": windows[-1]["loss"] if windows else None,
        "energy_gap": windows[-1].get("energy_gap") if windows else None, "recoveries": result["retries"],
        "finite": all(torch.isfinite(p).all().item() for p in t.jem.parameters()),
        "val_acc": result.get("val_acc"), "peak_mb": None if cpu else torch.cuda.max_memory_allocated() / 2**20,
    }
    print(json.dumps({"gpu_check_sada": fig}))


def sada_check(budget: Budget, tmp: Path, quick: bool, cpu: bool) -> dict[str, Any]:
    if budget.left() < 30:
        return {"status": "skipped", "error": "time budget spent"}
    args = ["--sada-worker", str(tmp / "sada")] + (["--quick"] if quick else []) + (["--force-cpu"] if cpu else [])
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    code, out, secs = _run(cmd, budget.left(), {"OMP_NUM_THREADS": "1"})
    line = next((x for x in out.splitlines() if x.startswith('{"gpu_check_sada"')), None)
    if code != 0 or line is None:
        return {"status": "timeout" if code is None else "failed", "seconds": secs, "error": out[-1500:]}
    fig = json.loads(line)["gpu_check_sada"]
    ok = fig["finite"] and fig["final_loss"] is not None
    return {"status": "ok" if ok else "failed", **fig, "wall_seconds": secs}


# -- the summary -------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def summary_text(result: dict[str, Any]) -> str:
    """The few lines a person reads: one per check, one per benchmark variant."""
    m, c = result["meta"], result["checks"]
    lines = [f"gpu-check: {result['status']} on {m['device_name']} x{m['device_count']} (torch {m['torch']}, "
             f"CUDA {m['cuda']}) in {m['wall_s']:.0f} s"]
    t = c["cuda_tests"]
    lines.append(f"cuda tests: {t['status']}: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                 f"{t.get('skipped', 0)} skipped" + (f" ({', '.join(t['failures'])})" if t.get("failures") else ""))
    b = c["step_benchmark"]
    lines.append(f"step benchmark: {b['status']}")
    for v in b.get("variants", []):
        if v["status"] != "ok":
            lines.append(f"  {v['name']:<27} {v['status']}")
            continue
        lines.append(
            f"  {v['name']:<27} JEM {_f(v['jem_ms'])} ms, clf {_f(v['clf_ms'], '.2f')} ms, b/a {_f(v['ratio'], '.2f')} "
            f"(count {_f(v['work_ratio'], '.2f')}), {_f(v['jem_images_per_s'], '.0f')} img/s, "
            f"{_f(v['jem_tflops_per_s'])} TFLOP/s, peak {_f(v['jem_peak_mb'], '.0f')} MB, "
            f"syncs {_f(v['host_syncs'], 'd')}"
        )
    d = c["ddp"]
    runs = ", ".join(f"{r['nproc']} proc {r['status']}" for r in d.get("runs", []))
    lines.append(f"ddp: {d['status']}" + (f" ({runs})" if runs else ""))
    s = c["sada_run"]
    if s["status"] == "ok":
        lines.append(f"SADA-JEM run: ok: {s['steps']} steps at {_f(s['steps_per_s'], '.2f')} steps/s, final loss "
                     f"{_f(s['final_loss'], '.3f')}, {s['recoveries']} recoveries, peak {_f(s['peak_mb'], '.0f')} MB")
    else:
        lines.append(f"SADA-JEM run: {s['status']}")
    return "\n".join(lines)


def meta(device: torch.device, wall_s: float, budget_s: float) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "machine": platform.machine(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "budget_s": budget_s, "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check", help="folder of gpu_check.json and summary.txt")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time budget")
    ap.add_argument("--force-cpu", action="store_true", help="run every check on the CPU (a rehearsal of the code)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: seconds (with --force-cpu, the tests' run)")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sada-worker", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        ddp_worker()
        return 0
    if args.sada_worker:
        sada_worker(args.sada_worker, args.quick, args.force_cpu)
        return 0
    if not torch.cuda.is_available() and not args.force_cpu:
        print(NO_GPU.format(torch=torch.__version__))
        return 0
    device = torch.device("cpu") if args.force_cpu else torch.device("cuda", 0)
    budget, t0 = Budget(args.budget_s), time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        checks = {"cuda_tests": cuda_tests(budget, tmp)}
        checks["step_benchmark"] = step_benchmark(budget, tmp, device.type, args.quick)
        checks["ddp"] = ddp_check(budget, tmp, torch.cuda.device_count() if device.type == "cuda" else 0,
                                  args.force_cpu)
        checks["sada_run"] = sada_check(budget, tmp, args.quick, args.force_cpu)
    failed = any(c["status"] in ("failed", "timeout") for c in checks.values())
    result = {"schema": SCHEMA, "status": "failed" if failed else "ok",
              "meta": meta(device, time.monotonic() - t0, args.budget_s), "checks": checks}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    text = summary_text(result)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'summary.txt'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
