"""Throughput of the Rust trainer against the repo's PyTorch port of the reference (eager), same data,
profile, batch, steps, precision and device, in one run. Started by `run.sh --bench` of the GPU bundle
(scripts/gpu-bundle.sh), which finds torch and passes the paths; needs no Rust toolchain.

For each side (alternating, `--repeat` times): one whole training run on the same prepared split.
  * Rust: the bundle's `train` binary, AR_PHASE=train (trainer/CONTRACT.md), all of train.rs's MAX_STEPS.
  * PyTorch: reference/eclip_reference.py --steps <the Rust run's step count> [--bf16 on CUDA when
    train.rs has BF16_AUTOCAST].
Measured here, not taken from the programs:
  * steady steps/s: both print a progress line at step 1, every 10% and at the end; this script stamps
    each line when it arrives and times the steps between the first line after step 1 and the last line
    (steps 40..400 at the baseline), so start-up, the first step and the checkpoint write are excluded;
  * whole-process steps/s: steps / process wall time (imports, data load, model build included);
  * peak memory: the child's max RSS (CPU) or the rise of the GPU's memory in use, sampled with
    nvidia-smi every 100 ms (CUDA context and allocator cache included, the same measure for both).
Model FLOPs per step: counted with torch.utils.flop_counter.FlopCounterMode on one forward+backward of
the PyTorch port (matmuls, convolutions, attention through the math backend so that it is counted on
every device; the optimiser's and the norms' elementwise work is not counted),
without and with an expert batch, averaged with the expert probability. MFU = steps/s x FLOPs/step /
peak, with the peak from --peak-tflops or the spec sheet of the detected GPU (dense, per precision).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

STEP_LINE = re.compile(r"^step\s+(\d+)/(\d+) \|.*\|\s*([0-9.]+)s\s*$")
HEADER = re.compile(r"\| ([0-9.]+)M params \| proj (\d+) bs (\d+) lr \S+ steps (\d+)")

# Dense peak TFLOP/s from the vendors' spec sheets: (substring of the device name, bf16, fp32 without TF32).
PEAKS = [
    ("H200", 989.4, 66.9),
    ("H100 NVL", 835.0, 60.0),
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("GH200", 989.4, 66.9),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class GpuMemory:
    """The GPU's memory in use, sampled by `nvidia-smi -lms 100` while a run lasts."""

    def __init__(self) -> None:
        self.proc = None
        self.values: list[int] = []
        self.baseline = None

    @staticmethod
    def index() -> str:
        v = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        return v or "0"

    @classmethod
    def query(cls, field: str) -> str | None:
        if not shutil.which("nvidia-smi"):
            return None
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i",
                                  cls.index()], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None

    def start(self) -> None:
        base = self.query("memory.used")
        if base is None:
            return
        self.baseline = int(base) << 20
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", self.index(), "-lms", "100"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.values.append(int(line.strip()) << 20)
            except ValueError:
                pass

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        return max(0, max(self.values, default=self.baseline) - self.baseline)


def run_side(name: str, cmd: list[str], env: dict, device: str, log_path: Path) -> dict:
    """Runs one training process; stamps its progress lines; returns what was measured."""
    log(f"== {name}: {' '.join(cmd)}")
    mem = GpuMemory()
    if device == "cuda":
        mem.start()
    lines: list[tuple[float, int, int, float]] = []  # (arrival, step, total, self-reported seconds)
    header, last = None, ""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with open(log_path, "w") as logf:
        for raw in proc.stdout:
            now = time.perf_counter()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            logf.write(line + "\n")
            log(f"[{name}] {line}")
            if m := STEP_LINE.match(line):
                lines.append((now, int(m[1]), int(m[2]), float(m[3])))
            elif header is None and (h := HEADER.search(line)):
                header = h
            if line.strip():
                last = line
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    gpu_peak = mem.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}): see {log_path}")
    if len(lines) < 3:
        raise SystemExit(f"{name}: fewer than 3 progress lines in {log_path}; cannot time a steady window")
    first, end = lines[1], lines[-1]  # the first line after step 1 .. the last step
    steps = end[1]
    return {
        "steps": steps,
        "window": (first[1], end[1]),
        "steady": (end[1] - first[1]) / max(end[0] - first[0], 1e-9),
        "steady_self": (end[1] - first[1]) / max(end[3] - first[3], 1e-9),
        "whole": steps / wall,
        "wall": wall,
        "peak_measured": gpu_peak if device == "cuda" else rusage.ru_maxrss * 1024,
        "params_m": float(header[1]) if header else None,
        "proj": int(header[2]) if header else None,
        "batch": int(header[3]) if header else None,
        "last": last,
    }


def prepare(args, prep_root: Path) -> Path:
    key = hashlib.sha256(str(args.dataset.resolve()).encode() + args.tokenizer.read_bytes()).hexdigest()[:10]
    out = prep_root / f"{args.profile}-{key}"
    if (out / "train.safetensors").is_file() and (out / "prepare_report.json").is_file():
        log(f"prepared data: cached in {out}")
        return out / "train.safetensors"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [str(args.bin / "prepare"), "--dataset", str(args.dataset), "--profile", args.profile,
           "--tokenizer", str(args.tokenizer), "--out", str(out)]
    log(f"== prepare: {' '.join(cmd)}")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(args.torch_lib)}
    subprocess.run(cmd, env=env, check=True)
    return out / "train.safetensors"


def count_flops(args, train_file: Path, device: str) -> tuple[float, float, float, float]:
    """(FLOPs per step in expectation, without expert batch, with one, expert probability)."""
    sys.path.insert(0, str(args.reference))
    import eclip_reference as R  # noqa: E402
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    torch.manual_seed(0)
    data = R.PreparedSplit(train_file, dev)
    model = R.build_model(R.PROFILES[args.profile], data.vocab_size, args.text_tower, args.image_tower)
    model = model.to(dev).train()
    # FLOPs are linear in the batch (but for the B x B logits, negligible): on the CPU, where a full-size
    # step takes a minute, count 8 rows and scale (checked: within 0.1% of a full batch).
    rows = R.BATCH_SIZE if device == "cuda" else min(8, R.BATCH_SIZE)
    scale = R.BATCH_SIZE / rows
    batch = data.batch(data.sampler(rows).next_rows())
    expert = data.expert_batch(data.expert_sampler(rows).next_rows())

    def one(with_expert: bool) -> float:
        # The math attention backend decomposes into counted matmuls (the CPU's fused kernel is not counted).
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
                loss = R.step_loss(model, batch, expert if with_expert else None, 0.5)
            loss.backward()
        model.zero_grad(set_to_none=True)
        return float(fc.get_total_flops()) * scale

    f0, f1 = one(False), one(True)
    p = R.EXPERT_PROB
    return (1 - p) * f0 + p * f1, f0, f1, p


def peak_tflops(args, device: str) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device != "cuda":
        return None, "CPU: pass --peak-tflops for an MFU"
    name = GpuMemory.query("name") or ""
    if not name:
        import torch
        name = torch.cuda.get_device_name(0)
    for key, bf16, fp32 in PEAKS:
        if key in name:
            return (bf16 if args.bf16 else fp32), f"{name}, {'bf16' if args.bf16 else 'fp32'} dense, spec sheet"
    return None, f"{name}: unknown peak, pass --peak-tflops"


def gib(b) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, required=True, help="folder with the trainer's `train` and `prepare`")
    ap.add_argument("--reference", type=Path, required=True, help="folder with eclip_reference.py")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--torch-lib", type=Path, required=True)
    ap.add_argument("--profile", choices=["tests", "cpu", "gpu"], required=True)
    ap.add_argument("--device", choices=["cpu", "cuda"], required=True)
    ap.add_argument("--bf16", action="store_true", help="CUDA: the Rust train was built with BF16_AUTOCAST")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating; medians are shown")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s at this precision (for the MFU)")
    ap.add_argument("--image-tower", type=Path)
    ap.add_argument("--text-tower", type=Path)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.bf16 and args.device != "cuda":
        ap.error("--bf16 is CUDA-only (train.rs autocasts only on CUDA)")

    load0 = os.getloadavg()[0]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_root = args.work / "bench" / stamp
    run_root.mkdir(parents=True, exist_ok=True)
    train_file = prepare(args, args.work / "bench-prepared")

    rust_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LD_LIBRARY_PATH": str(args.torch_lib),
                "TORCH_CPP_LOG_LEVEL": "ERROR", "LANG": "C.UTF-8", "AR_PHASE": "train",
                "AR_PROFILE": args.profile, "AR_DATA": str(train_file), "AR_BUDGET_S": "86400",
                "AR_SEED": str(args.seed), "AR_DEVICE": args.device}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        rust_env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if args.image_tower:
        rust_env["AR_IMAGE_TOWER"] = str(args.image_tower)
    if args.text_tower:
        rust_env["AR_TEXT_TOWER"] = str(args.text_tower)

    results = {"rust": [], "torch": []}
    rust_steps = None
    for r in range(max(args.repeat, 1)):
        order = ["rust", "torch"] if r % 2 == 0 else ["torch", "rust"]
        if rust_steps is None:
            order = ["rust", "torch"]  # the Rust run decides the step count
        for side in order:
            d = run_root / f"{side}-{r}"
            d.mkdir()
            if side == "rust":
                env = dict(rust_env, AR_OUT=str(d), HOME=str(d), TMPDIR=str(d))
                res = run_side("rust", [str(args.bin / "train")], env, args.device, run_root / f"{side}-{r}.log")
                summary = json.loads((d / "train_summary.json").read_text())
                res["final_loss"] = summary.get("final_loss")
                res["peak_reported"] = summary.get("peak_memory_bytes")
                rust_steps = res["steps"]
                for f in d.glob("checkpoint.safetensors"):
                    f.unlink()
            else:
                cmd = [sys.executable, str(args.reference / "eclip_reference.py"), "--data", str(train_file),
                       "--profile", args.profile, "--steps", str(rust_steps), "--device", args.device,
                       "--seed", str(args.seed)]
                cmd += ["--bf16"] if args.bf16 else []
                cmd += ["--image-tower", str(args.image_tower)] if args.image_tower else []
                cmd += ["--text-tower", str(args.text_tower)] if args.text_tower else []
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                res = run_side("pytorch", cmd, env, args.device, run_root / f"{side}-{r}.log")
                m = re.search(r"peak_mem_bytes=(\d+) final_loss=(\S+)", res["last"])
                res["final_loss"] = float(m[2]) if m else None
                res["peak_reported"] = int(m[1]) if m else None
            results[side].append(res)

    rust, torch_ = results["rust"], results["torch"]
    for key in ("params_m", "proj", "batch", "steps"):
        if rust[0][key] != torch_[0][key]:
            log(f"WARNING: {key} differs: Rust {rust[0][key]} vs PyTorch {torch_[0][key]} "
                "(train.rs is no longer the baseline the port mirrors): the comparison is not like for like")

    log("== counting model FLOPs per step on the PyTorch port (FlopCounterMode)")
    flops, f0, f1, p = count_flops(args, train_file, args.device)
    peak, peak_src = peak_tflops(args, args.device)

    def med(side, key):
        vals = [x[key] for x in side if x[key] is not None]
        return statistics.median(vals) if vals else None

    fig = {}
    for name, side in (("rust", rust), ("torch", torch_)):
        steady = med(side, "steady")
        fig[name] = {
            "steady_steps_per_s": steady,
            "steady_steps_per_s_self_reported_clock": med(side, "steady_self"),
            "whole_process_steps_per_s": med(side, "whole"),
            "wall_s": med(side, "wall"),
            "peak_memory_measured_bytes": med(side, "peak_measured"),
            "peak_memory_reported_bytes": med(side, "peak_reported"),
            "final_loss": med(side, "final_loss"),
            "params_m": side[0]["params_m"],
            "achieved_tflops": steady * flops / 1e12,
            "mfu": steady * flops / 1e12 / peak if peak else None,
        }
    r_, t_ = fig["rust"], fig["torch"]
    w = rust[0]["window"]
    precision = "bf16 autocast" if args.bf16 else "fp32"
    mem_what = "GPU memory in use, rise during the run (nvidia-smi)" if args.device == "cuda" else "max RSS"
    rep_what = ("Rust: device memory in use; PyTorch: allocator peak" if args.device == "cuda"
                else "both: max RSS")

    def row(label, a, b, ratio=False, fmt="{:.2f}"):
        fa = "n/a" if a is None else (a if isinstance(a, str) else fmt.format(a))
        fb = "n/a" if b is None else (b if isinstance(b, str) else fmt.format(b))
        rr = f"{a / b:.2f}x" if ratio and a and b else ""
        print(f"| {label} | {fa} | {fb} | {rr} |")

    print()
    where = (GpuMemory.query("name") or "GPU") if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"== throughput: Rust trainer vs PyTorch port (eager), profile {args.profile}, {args.device} ({where}),"
          f" {precision}, {rust_steps} steps of batch {rust[0]['batch']}, {max(args.repeat, 1)} run(s) each (median)")
    print()
    print("| | Rust `train` | PyTorch `eclip_reference.py` | Rust/PyTorch |")
    print("|---|---|---|---|")
    row(f"steps/s, steps {w[0]}..{w[1]} (bench clock)", r_["steady_steps_per_s"], t_["steady_steps_per_s"], True)
    row("steps/s, whole process (start-up, data load included)", r_["whole_process_steps_per_s"],
        t_["whole_process_steps_per_s"], True)
    row("process wall time (s)", r_["wall_s"], t_["wall_s"], fmt="{:.1f}")
    row(f"peak memory ({mem_what})", gib(r_["peak_memory_measured_bytes"]), gib(t_["peak_memory_measured_bytes"]))
    row(f"peak memory as reported ({rep_what})", gib(r_["peak_memory_reported_bytes"]),
        gib(t_["peak_memory_reported_bytes"]))
    row("final loss (one run, one seed: not a quality measure)", r_["final_loss"], t_["final_loss"], fmt="{:.4f}")
    row("trainable parameters (M)", r_["params_m"], t_["params_m"])
    row("model TFLOP/s achieved (steady)", r_["achieved_tflops"], t_["achieved_tflops"], fmt="{:.3f}")
    row(f"MFU (peak {peak:.1f} TFLOP/s)" if peak else f"MFU ({peak_src})",
        None if r_["mfu"] is None else f"{100 * r_['mfu']:.1f}%",
        None if t_["mfu"] is None else f"{100 * t_['mfu']:.1f}%")
    print()
    print(f"model FLOPs per step: {flops / 1e9:.2f} GFLOP (plain step {f0 / 1e9:.2f}, with expert batch "
          f"{f1 / 1e9:.2f}, expert probability {p}); counted by FlopCounterMode on the PyTorch port, fwd+bwd")
    print(f"load average (1 min) at start {load0:.2f}, at end {os.getloadavg()[0]:.2f} "
          f"(other work on the machine slows both sides)")
    print(f"logs: {run_root}")
    if args.json:
        args.json.write_text(json.dumps({"profile": args.profile, "device": args.device, "precision": precision,
                                         "steps": rust_steps, "window": w, "flops_per_step": flops,
                                         "peak_tflops": peak, "peak_source": peak_src, "figures": fig,
                                         "runs": results}, indent=2))


if __name__ == "__main__":
    main()
