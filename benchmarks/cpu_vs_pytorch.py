#!/usr/bin/python3
"""Keel against PyTorch on the CPU: training images/s for one Fashion-MNIST
epoch of LeNet-5 and cnn-small (batch 64, SGD lr 0.05 momentum 0.9, the same
thread count), and the peak resident memory of each, measured in separate
child processes (os.wait4 gives each child's own ru_maxrss).

PyTorch runs twice: tuned (torch.set_num_threads(--threads), OpenBLAS's
pthread build as the system BLAS) and as installed (no set_num_threads, so
whatever torch defaults to here). Both sides do the same per-batch work:
bytes -> float, normalise, forward, backward, step.

    /usr/bin/python3 benchmarks/cpu_vs_pytorch.py --keel build/src/cli/keel --threads 2

Debian's python3-torch is imported from /usr/bin/python3 (a pyenv python3
on PATH may not have it). --out FILE.md also writes the table as markdown.
"""
import argparse
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import time

MODELS = ["lenet5", "cnn-small"]
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


# ---- the PyTorch side (run in a child process) --------------------------------

def read_idx(path):
    import numpy as np
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, name):
    for candidate in (name + ".gz", name):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    sys.exit(f"cpu_vs_pytorch: {name}[.gz] not found in {data_dir}")


def torch_model(name):
    import torch.nn as nn
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if name == "cnn-small":
        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.MaxPool2d(2)]
        return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(),
                             nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))
    sys.exit(f"cpu_vs_pytorch: no PyTorch twin for model '{name}'")


def torch_worker(args):
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    images = torch.from_numpy(read_idx(find(args.data, "train-images-idx3-ubyte")).copy())
    labels = torch.from_numpy(read_idx(find(args.data, "train-labels-idx1-ubyte")).astype("int64"))
    if args.subset:
        images, labels = images[:args.subset], labels[:args.subset]
    mean = images.float().mean().item() / 255.0
    std = (images.float() / 255.0).std().item()
    model = torch_model(args.model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = args.batch
    steps = len(images) // batch

    def step(index):
        x = images[index].unsqueeze(1).float().div_(255.0).sub_(mean).div_(std)
        y = labels[index]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    order = torch.randperm(len(images))
    for k in range(5):  # warm-up: first-touch allocations, thread pools
        step(order[k * batch:(k + 1) * batch])
    order = torch.randperm(len(images))
    start = time.perf_counter()
    for k in range(steps):
        loss = step(order[k * batch:(k + 1) * batch])
    seconds = time.perf_counter() - start
    print(json.dumps({
        "images_per_second": steps * batch / seconds,
        "seconds": seconds,
        "loss": float(loss),
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }))


# ---- the driver ------------------------------------------------------------------

def run_child(cmd, env=None):
    """Runs cmd, returns (stdout, peak RSS in MiB) using the child's own rusage."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"cpu_vs_pytorch: {' '.join(cmd)} failed ({proc.returncode}):\n{out}{err}")
    return out, usage.ru_maxrss / 1024.0


def run_keel(args, model):
    cmd = [args.keel, "train", "--model", model, "--epochs", "1", "--batch", str(args.batch),
           "--threads", str(args.threads), "--data", args.data, "--no-test", "--progress", "none",
           "--schedule", "constant"]
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    out, rss = run_child(cmd)
    match = re.search(r"epoch 1/1 .*?([\d,]+) img/s", out)
    if not match:
        sys.exit(f"cpu_vs_pytorch: no images/s in keel's output:\n{out}")
    return float(match.group(1).replace(",", "")), rss


def run_torch(args, model, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--threads", str(threads),
           "--batch", str(args.batch), "--data", args.data, "--subset", str(args.subset)]
    out, rss = run_child(cmd)
    result = json.loads(out.strip().splitlines()[-1])
    return result, rss


def blas_in_use():
    try:
        return os.path.realpath("/etc/alternatives/libblas.so.3-x86_64-linux-gnu")
    except OSError:
        return "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keel", default="build/src/cli/keel", help="the keel program (default build/src/cli/keel)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: every core)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--data", default=os.environ.get("KEEL_DATA_DIR", DEFAULT_DATA))
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default lenet5,cnn-small)")
    p.add_argument("--subset", type=int, default=0, help="train on the first N images (default: the whole epoch)")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure; the best is reported (default 1)")
    p.add_argument("--out", help="also write the results as markdown to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        torch_worker(args)
        return

    rows = []
    for model in args.models.split(","):
        keel = max((run_keel(args, model) for _ in range(args.repeat)), key=lambda r: r[0])
        tuned = max((run_torch(args, model, args.threads) for _ in range(args.repeat)),
                    key=lambda r: r[0]["images_per_second"])
        stock = max((run_torch(args, model, 0) for _ in range(args.repeat)),
                    key=lambda r: r[0]["images_per_second"])
        rows.append((model, keel, tuned, stock))
        print(f"{model}: keel {keel[0]:.0f} img/s, {keel[1]:.0f} MiB; torch ({tuned[0]['threads']} threads) "
              f"{tuned[0]['images_per_second']:.0f} img/s, {tuned[1]:.0f} MiB; torch as installed "
              f"({stock[0]['threads']} threads) {stock[0]['images_per_second']:.0f} img/s", flush=True)

    torch_version = rows[0][2][0]["torch"] if rows else "?"
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores; keel --threads {args.threads}; "
        f"torch {torch_version} (set_num_threads({args.threads}) / as installed); BLAS {blas_in_use()}",
        f"batch {args.batch}, SGD lr 0.05 momentum 0.9, one epoch of "
        f"{args.subset if args.subset else 'all 60,000'} Fashion-MNIST images; best of {args.repeat}",
        "",
        "| model | Keel img/s | PyTorch img/s (tuned) | Keel / PyTorch | PyTorch img/s (as installed) "
        "| Keel / as installed | Keel peak RSS | PyTorch peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, keel, tuned, stock in rows:
        t, s = tuned[0]["images_per_second"], stock[0]["images_per_second"]
        lines.append(f"| {model} | {keel[0]:,.0f} | {t:,.0f} | {keel[0] / t:.2f}x | {s:,.0f} "
                     f"({stock[0]['threads']} thread{'s' if stock[0]['threads'] != 1 else ''}) | "
                     f"{keel[0] / s:.2f}x | {keel[1]:.0f} MiB | {tuned[1]:.0f} MiB |")
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
