#!/usr/bin/env python3
"""Keel against PyTorch on one GPU, side by side: training images/s (forward,
backward and an SGD-momentum update on synthetic data already on the GPU),
forward-only images/s and peak GPU memory, for the same models and batch.

    python3 benchmarks/gpu_vs_pytorch.py --keel build-cuda/src/cli/keel \
        [--models alexnet:128,vgg16:64,resnet50:128] [--iters 20] [--warmup 5] \
        [--modes strict,tf32] [--per-layer] [--markdown FILE]

Keel runs as `keel bench --json` in a child process; PyTorch (the torch on
the GPU machine) runs the same networks eagerly in another child, each step
ending with loss.item() as Keel's does, so both sides time whole steps that
the host waits for. Two precisions: `strict` is IEEE fp32 everywhere (Keel
--strict-fp32; torch with cudnn.allow_tf32 and matmul.allow_tf32 off) and
`tf32` lets both use TF32 tensor cores for convolutions and GEMMs. The
models follow Keel's zoo: AlexNet as the paper's two towers (grouped
convolutions in PyTorch, the same arithmetic) with LRN at 227x227, VGG-16
and ResNet-50 at 224x224, 1000 classes.

--per-layer adds, per model in IEEE fp32, the forward and backward time of
each kind of layer (convolution, linear, batch norm, LRN, pooling, ReLU,
the rest), both sides timed the same way: the device synchronised around
every layer (Keel's `keel bench --per-layer`; forward and backward hooks
in PyTorch), so the sums exceed a free-running step.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_MODELS = "alexnet:128,vgg16:64,resnet50:128"


# ---- the PyTorch side (a child process: --torch-worker) -----------------------

def torch_alexnet(nn):
    # Krizhevsky et al. 2012: conv2, conv4 and conv5 stay within a tower
    # (groups=2), conv3 and the FC layers see both.
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 1000))


def torch_vgg16(nn):
    layers, channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


def torch_resnet50(nn):
    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + (self.shortcut(x) if self.shortcut is not None else x))

    layers = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, padding=1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers)


TORCH_MODELS = {
    "alexnet": (torch_alexnet, (3, 227, 227)),
    "vgg16": (torch_vgg16, (3, 224, 224)),
    "resnet50": (torch_resnet50, (3, 224, 224)),
}


# Layer kinds, from Keel's layer names and PyTorch's module classes.
KINDS = ["conv", "linear", "batch norm", "lrn", "pool", "relu", "other"]


def keel_kind(name):
    parts = name.split(".")
    leaf = parts[-1]
    if len(parts) > 1 and parts[-2] == "downsample":  # ResNet's projection: conv then batch norm
        return "conv" if leaf == "0" else "batch norm"
    if "conv" in leaf:
        return "conv"
    for prefix, kind in (("fc", "linear"), ("linear", "linear"), ("bn", "batch norm"), ("norm", "lrn"),
                         ("lrn", "lrn")):
        if leaf.startswith(prefix):
            return kind
    for part, kind in (("pool", "pool"), ("relu", "relu")):
        if part in leaf:
            return kind
    return "other"


def torch_kind(module):
    name = type(module).__name__
    return {"Conv2d": "conv", "Linear": "linear", "BatchNorm2d": "batch norm", "LocalResponseNorm": "lrn",
            "MaxPool2d": "pool", "AvgPool2d": "pool", "AdaptiveAvgPool2d": "pool", "ReLU": "relu"}.get(name, "other")


def torch_layer_times(model, x, y, loss_fn, opt, iters):
    """Forward and backward seconds per layer kind, synchronising around
    every leaf module (as keel bench --per-layer does around every node).
    A module's backward time is the time since the previous module's
    backward finished (backward hooks run when a module's gradients are
    done), which works with torch 1.x's hooks too."""
    import torch
    fwd = {k: 0.0 for k in KINDS}
    bwd = {k: 0.0 for k in KINDS}
    started, last = {}, [0.0]

    def pre_forward(module, *_):
        torch.cuda.synchronize()
        started[id(module)] = time.perf_counter()

    def post_forward(module, *_):
        torch.cuda.synchronize()
        fwd[torch_kind(module)] += time.perf_counter() - started[id(module)]

    def post_backward(module, *_):
        torch.cuda.synchronize()
        now = time.perf_counter()
        bwd[torch_kind(module)] += now - last[0]
        last[0] = now

    handles = []
    for module in model.modules():
        if len(list(module.children())) == 0:
            handles += [module.register_forward_pre_hook(pre_forward), module.register_forward_hook(post_forward),
                        module.register_full_backward_hook(post_backward)]
    model.train()
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        torch.cuda.synchronize()
        last[0] = time.perf_counter()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
    for h in handles:
        h.remove()
    return {k: fwd[k] / iters for k in KINDS}, {k: bwd[k] / iters for k in KINDS}


def torch_worker(spec):
    import torch
    import torch.nn as nn
    strict = spec["mode"] == "strict"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = False  # heuristics, as Keel's default
    build, shape = TORCH_MODELS[spec["model"]]
    dev = torch.device("cuda")
    torch.manual_seed(1)
    model = build(nn).to(dev)
    batch = spec["batch"]
    x = torch.randn(batch, *shape, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    def forward():
        with torch.no_grad():
            return model(x).sum().item()

    def timed(fn, model_mode):
        model.train(model_mode)
        for _ in range(spec["warmup"]):
            fn()
        times = []
        for _ in range(spec["iters"]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    torch.cuda.reset_peak_memory_stats()
    step = timed(train_step, True)
    fwd = timed(forward, False)
    layers = None
    if spec.get("per_layer"):
        layers = torch_layer_times(model, x, y, loss_fn, opt, max(2, spec["iters"] // 4))
    print("RESULT " + json.dumps({
        "layers": layers,
        "train_images_per_second": batch / step, "forward_images_per_second": batch / fwd,
        "peak_bytes": torch.cuda.max_memory_allocated(), "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.get_device_name()}))


# ---- driving both sides -------------------------------------------------------

def run_torch(model, batch, mode, args):
    spec = {"model": model, "batch": batch, "mode": mode, "iters": args.iters, "warmup": args.warmup,
            "per_layer": args.per_layer and mode == "strict"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def run_keel(model, batch, mode, args):
    cmd = [args.keel, "bench", "--model", model, "--batch", str(batch), "--device", args.device, "--iters",
           str(args.iters), "--warmup", str(args.warmup), "--json"]
    if mode == "strict":
        cmd.append("--strict-fp32")
        if args.per_layer:
            cmd.append("--per-layer")
    env = dict(os.environ)
    if args.keel_library_path:
        env["LD_LIBRARY_PATH"] = args.keel_library_path
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            # Everything Keel's device pool handed out at once (plan, parameter
            # blocks, optimiser state, library workspaces), as PyTorch's peak
            # allocated counts its own; the plan alone where there is no pool.
            result["peak_bytes"] = result.get("pool_peak_bytes") or result.get("plan_bytes", 0)
            if "layers" in result:
                fwd = {k: 0.0 for k in KINDS}
                bwd = {k: 0.0 for k in KINDS}
                for layer in result["layers"]:
                    fwd[keel_kind(layer["layer"])] += layer["forward_seconds"]
                    bwd[keel_kind(layer["layer"])] += layer["backward_seconds"]
                result["layers"] = (fwd, bwd)
            return result
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def mib(n):
    return f"{n / 1048576:,.0f} MiB"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keel", default="build-cuda/src/cli/keel")
    p.add_argument("--models", default=DEFAULT_MODELS, help="model:batch,... (default %s)" % DEFAULT_MODELS)
    p.add_argument("--keel-library-path", help="LD_LIBRARY_PATH for keel only (PyTorch keeps the caller's)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default="strict,tf32")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--per-layer", action="store_true", help="also time each kind of layer (IEEE fp32 runs)")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        torch_worker(json.loads(args.torch_worker))
        return
    rows, about = [], ""
    for item in args.models.split(","):
        model, _, batch = item.partition(":")
        if model not in TORCH_MODELS:
            sys.exit(f"gpu_vs_pytorch: no PyTorch twin for '{model}' (have {', '.join(TORCH_MODELS)})")
        batch = int(batch or 64)
        for mode in args.modes.split(","):
            keel = run_keel(model, batch, mode, args)
            torch_result = run_torch(model, batch, mode, args)
            about = about or (f"torch {torch_result.get('torch')}, cuDNN {torch_result.get('cudnn')} (torch's), "
                              f"{torch_result.get('gpu')}" if "gpu" in torch_result else "")
            rows.append((model, batch, mode, keel, torch_result))
            def fmt(r, key):
                return f"{r[key]:,.0f}" if key in r else "failed: " + " ".join(r.get("error", []))
            ratio = (keel["train_images_per_second"] / torch_result["train_images_per_second"]
                     if "train_images_per_second" in keel and "train_images_per_second" in torch_result else 0)
            print(f"{model} b{batch} {mode}: keel {fmt(keel, 'train_images_per_second')} img/s, "
                  f"torch {fmt(torch_result, 'train_images_per_second')} img/s, ratio {ratio:.2f}", flush=True)
    lines = [f"Keel vs PyTorch eager on {args.device}: {about}",
             f"median of {args.iters} steps after {args.warmup} warm-up; synthetic data on the GPU; "
             "strict = IEEE fp32, tf32 = TF32 tensor cores allowed for convolutions and GEMMs", "",
             "| model | batch | precision | Keel train img/s | PyTorch train img/s | Keel / PyTorch | "
             "Keel fwd img/s | PyTorch fwd img/s | Keel peak in use | PyTorch peak allocated |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, batch, mode, keel, tr in rows:
        if "error" in keel or "error" in tr:
            lines.append(f"| {model} | {batch} | {mode} | {' '.join(keel.get('error', [])) or 'ok'} | "
                         f"{' '.join(tr.get('error', [])) or 'ok'} | | | | | |")
            continue
        lines.append(f"| {model} | {batch} | {mode} | {keel['train_images_per_second']:,.0f} | "
                     f"{tr['train_images_per_second']:,.0f} | "
                     f"{keel['train_images_per_second'] / tr['train_images_per_second']:.2f}x | "
                     f"{keel['forward_images_per_second']:,.0f} | {tr['forward_images_per_second']:,.0f} | "
                     f"{mib(keel['peak_bytes'])} | {mib(tr['peak_bytes'])} |")
    for model, batch, mode, keel, tr in rows:
        if not keel.get("layers") or not tr.get("layers"):
            continue
        (kf, kb), (tf, tb) = keel["layers"], tr["layers"]
        lines += ["", f"{model} b{batch}, IEEE fp32, per kind of layer (ms per step, synchronised around each layer):",
                  "", "| layers | Keel fwd | PyTorch fwd | fwd ratio | Keel bwd | PyTorch bwd | bwd ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for kind in KINDS:
            if kf[kind] + tf[kind] + kb[kind] + tb[kind] == 0:
                continue
            ratio = lambda a, b: f"{b / a:.2f}x" if a > 0 and b > 0 else ""
            lines.append(f"| {kind} | {1e3 * kf[kind]:.2f} | {1e3 * tf[kind]:.2f} | {ratio(kf[kind], tf[kind])} | "
                         f"{1e3 * kb[kind]:.2f} | {1e3 * tb[kind]:.2f} | {ratio(kb[kind], tb[kind])} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
