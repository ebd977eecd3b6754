#!/usr/bin/python3
"""Keel against PyTorch on the CPU, side by side: training images/s per model
(forward + backward + SGD-momentum update, synthetic data), forward-only
images/s, peak resident memory, and per-layer convolution times (forward and
forward + backward for every distinct conv shape of each model).

Keel runs through benchmarks/bench_layers (build it first: ninja -C BUILD);
PyTorch (Debian's python3-torch, run with /usr/bin/python3) runs the same
networks with the same batch and thread count (torch.set_num_threads). Each
side runs in its own process so that peak RSS is its own; the two alternate
--repeat times and the best median of each is kept, which keeps the ratio
honest on a machine other work shares.

  /usr/bin/python3 benchmarks/conv_vs_pytorch.py [--models lenet5,cnn-small,alexnet-1gpu,resnet50]
        [--build build-perf] [--threads 2] [--iters 10] [--repeat 3] [--per-layer]
        [--engine auto|dnnl|im2col] [--avx512] [--as-installed] [--quiet-wait S] [--nice N]
        [--markdown FILE] [--json FILE]

--avx512 unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for both sides, so that
OpenBLAS picks its AVX-512 kernels on machines whose environment pins the
AVX2 ones. --engine sets KEEL_CPU_CONV for Keel. --as-installed adds PyTorch
as it comes (its default thread count) beside the tuned figure.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

BATCH = {"lenet5": 64, "cnn-small": 64, "alexnet-1gpu": 16, "resnet50": 8}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- PyTorch side (runs in a child process: --torch-worker) -----------------

def torch_model(name):
    import torch.nn as nn
    import torchvision

    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)), (1, 28, 28), 10

    def conv_bn_relu(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    if name == "cnn-small":
        return nn.Sequential(
            *conv_bn_relu(1, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, 10)), (1, 28, 28), 10
    if name == "alexnet-1gpu":
        return torchvision.models.alexnet(), (3, 224, 224), 1000
    if name == "resnet50":
        return torchvision.models.resnet50(), (3, 224, 224), 1000
    raise SystemExit(f"no PyTorch twin for model {name}")


def conv_shapes(model, input_shape, batch):
    """Every distinct Conv2d shape of the model, in order, with its layer names."""
    import torch
    import torch.nn as nn

    found = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def hook(mod, inputs, output, name=name):
                n, c, h, w = inputs[0].shape
                key = (n, c, h, w, mod.out_channels, *mod.kernel_size, *mod.stride, *mod.padding,
                       mod.groups, int(mod.bias is not None))
                found.setdefault(key, []).append(name)
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()
        model(torch.randn(batch, *input_shape))
        model.train()
    for h in hooks:
        h.remove()
    return [{"spec": ",".join(str(v) for v in key), "layers": names} for key, names in found.items()]


def torch_worker(args):
    import torch
    import torch.nn as nn

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.torch_worker == "conv":
        v = [int(x) for x in args.spec.split(",")]
        n, c, h, w, f, kh, kw, sh, sw, ph, pw, groups, bias = v
        conv = nn.Conv2d(c, f, (kh, kw), (sh, sw), (ph, pw), groups=groups, bias=bool(bias))
        x = torch.rand(n, c, h, w, requires_grad=True)
        with torch.no_grad():
            dy = torch.rand_like(conv(x))

        def step():
            t0 = time.perf_counter()
            y = conv(x)
            t1 = time.perf_counter()
            x.grad = None
            conv.zero_grad(set_to_none=True)
            y.backward(dy)
            return time.perf_counter() - t0, t1 - t0
        batch = n
    else:
        model, input_shape, classes = torch_model(args.torch_worker)
        batch = args.batch
        images = torch.rand(batch, *input_shape) * 2 - 1
        labels = torch.tensor([(i * 7 + 3) % classes for i in range(batch)])
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        model.train()

        def step():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            t1 = time.perf_counter()
            loss.backward()
            opt.step()
            return time.perf_counter() - t0, t1 - t0
    for _ in range(args.warmup):
        step()
    steps, forwards = [], []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.iters):
        s, f = step()
        steps.append(s)
        forwards.append(f)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    step_s, fwd_s = statistics.median(steps), statistics.median(forwards)
    result.update(step_ms=1e3 * step_s, fwd_ms=1e3 * fwd_s, images_per_s=batch / step_s,
                  fwd_images_per_s=batch / fwd_s, cpu_ms=1e3 * cpu_s / args.iters,
                  peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    if args.torch_worker != "conv" and args.per_layer:
        result["convs"] = conv_shapes(model, input_shape, batch)
    print(json.dumps(result))


# ---- the driver ---------------------------------------------------------------

def child_env(args, keel):
    env = dict(os.environ)
    if args.avx512:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    if keel and args.engine:
        env["KEEL_CPU_CONV"] = args.engine
    return env


NICE = 0


def run_json(cmd, env):
    if NICE:
        cmd = ["nice", "-n", str(NICE), *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def keel_cmd(args, extra):
    exe = os.path.join(ROOT, args.build, "benchmarks", "bench_layers")
    return [exe, "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup),
            "--json", *extra]


def torch_cmd(args, what, extra, threads=None):
    return [sys.executable, os.path.abspath(__file__), "--torch-worker", what, "--threads",
            str(args.threads if threads is None else threads), "--iters", str(args.iters),
            "--warmup", str(args.warmup), *extra]


def cpu_idle(seconds):
    """The fraction of CPU time the whole machine spent idle over `seconds`."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)   # idle + iowait, total
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


QUIET = {"waited_s": 0.0, "idle": []}


def wait_for_quiet(args):
    """Waits (up to --quiet-wait seconds) for the machine to be at least
    --quiet-idle idle, so that other work does not take the cores mid-run."""
    if args.quiet_wait <= 0:
        return
    start = time.time()
    while True:
        idle = cpu_idle(1.0)
        if idle >= args.quiet_idle or time.time() - start >= args.quiet_wait:
            QUIET["waited_s"] += time.time() - start
            QUIET["idle"].append(idle)
            return


def best_of(args, keel, torch, torch_env=None):
    """Alternates the two commands --repeat times; keeps each side's fastest run."""
    best_k = best_t = None
    for _ in range(args.repeat):
        wait_for_quiet(args)
        k = run_json(keel, child_env(args, True))
        wait_for_quiet(args)
        t = run_json(torch, torch_env or child_env(args, False))
        if best_k is None or k["step_ms"] < best_k["step_ms"]:
            best_k = k
        if best_t is None or t["step_ms"] < best_t["step_ms"]:
            best_t = t
    return best_k, best_t


def bench_model(args, name):
    batch = BATCH.get(name, 1) if args.batch == 0 else args.batch
    extra_k = ["--model", name, "--batch", str(batch)] + (["--per-layer"] if args.per_layer else [])
    extra_t = ["--batch", str(batch)] + (["--per-layer"] if args.per_layer else [])
    k, t = best_of(args, keel_cmd(args, extra_k), torch_cmd(args, name, extra_t))
    row = {"model": name, "batch": batch, "keel": k, "torch": t}
    if args.as_installed:
        row["torch_as_installed"] = run_json(torch_cmd(args, name, ["--batch", str(batch)], threads=0),
                                             child_env(args, False))
    if args.per_layer:
        row["convs"] = []
        for conv in t.get("convs", []):
            ck, ct = best_of(args, keel_cmd(args, ["--conv", conv["spec"], "--per-layer"]),
                             torch_cmd(args, "conv", ["--spec", conv["spec"]]))
            row["convs"].append({"spec": conv["spec"], "layers": conv["layers"], "keel": ck, "torch": ct})
    return row


def ratio(a, b):
    return a / b if b else float("nan")


def report(args, rows, started):
    lines = []
    say = lines.append
    say(f"# Keel vs PyTorch on the CPU ({time.strftime('%Y-%m-%d %H:%M', time.localtime(started))})")
    say("")
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    say(f"- machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.2f}")
    say(f"- command: `{' '.join(sys.argv)}`")
    say(f"- threads {args.threads}, {args.iters} timed steps after {args.warmup} warm-up, best median of "
        f"{args.repeat} alternating runs{f', both at nice {args.nice}' if args.nice else ''}; Keel conv engine: "
        f"{args.engine or 'default'}; OpenBLAS env: "
        + ("OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset (AVX-512 kernels)" if args.avx512 else
           f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"))
    if rows:
        say(f"- PyTorch {rows[0]['torch'].get('torch', '?')}")
    if QUIET["idle"]:
        idle = sorted(QUIET["idle"])
        say(f"- machine idle before each run: median {100 * idle[len(idle) // 2]:.0f}%, lowest "
            f"{100 * idle[0]:.0f}% (waited {QUIET['waited_s']:.0f} s in all for --quiet-idle "
            f"{100 * args.quiet_idle:.0f}%)")
    say("")
    say("| model | batch | Keel img/s | PyTorch img/s | ratio | Keel fwd img/s | PyTorch fwd img/s | fwd ratio "
        "| Keel peak RSS MiB | PyTorch peak RSS MiB | Keel faults/step |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        k, t = r["keel"], r["torch"]
        say(f"| {r['model']} | {r['batch']} | {k['images_per_s']:.1f} | {t['images_per_s']:.1f} | "
            f"{ratio(k['images_per_s'], t['images_per_s']):.2f} | {k['fwd_images_per_s']:.1f} | "
            f"{t['fwd_images_per_s']:.1f} | {ratio(k['fwd_images_per_s'], t['fwd_images_per_s']):.2f} | "
            f"{k['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} | {k['faults_per_step']:.0f} |")
    if any("torch_as_installed" in r for r in rows):
        say("")
        say("PyTorch as installed (its default thread count):")
        say("")
        say("| model | PyTorch threads | PyTorch img/s | Keel / PyTorch |")
        say("|---|---|---|---|")
        for r in rows:
            if "torch_as_installed" in r:
                a = r["torch_as_installed"]
                say(f"| {r['model']} | {a['threads']} | {a['images_per_s']:.1f} | "
                    f"{ratio(r['keel']['images_per_s'], a['images_per_s']):.2f} |")
    for r in rows:
        if not r.get("convs"):
            continue
        say("")
        say(f"## {r['model']}: convolutions alone (batch {r['batch']}; x needs a gradient), ms")
        say("")
        say("| layers | N,C,H,W,F,KH,KW,SH,SW,PH,PW,G,bias | Keel fwd | PyTorch fwd | fwd ratio | Keel fwd+bwd "
            "| PyTorch fwd+bwd | ratio | Keel GFLOP/s |")
        say("|---|---|---|---|---|---|---|---|---|")
        for c in r["convs"]:
            k, t = c["keel"], c["torch"]
            v = [int(x) for x in c["spec"].split(",")]
            n, ch, h, w, f, kh, kw, sh, sw, ph, pw, g = v[:12]
            p, q = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            flops = 3 * 2.0 * n * f * p * q * (ch // g) * kh * kw
            names = ", ".join(c["layers"][:3]) + (f" (+{len(c['layers']) - 3})" if len(c["layers"]) > 3 else "")
            say(f"| {names} | {c['spec']} | {k['fwd_ms']:.2f} | {t['fwd_ms']:.2f} | "
                f"{ratio(t['fwd_ms'], k['fwd_ms']):.2f} | {k['step_ms']:.2f} | {t['step_ms']:.2f} | "
                f"{ratio(t['step_ms'], k['step_ms']):.2f} | {flops / k['step_ms'] / 1e6:.0f} |")
        layers = r["keel"].get("layers")
        if layers:
            say("")
            say(f"Keel's per-layer profile of the whole {r['model']} step (ms per step, profiled run):")
            say("")
            say("| layer | op | fwd | bwd |")
            say("|---|---|---|---|")
            for l in layers:
                if l["fwd_ms"] + l["bwd_ms"] >= 0.05:
                    say(f"| {l['name']} | {l['op']} | {l['fwd_ms']:.2f} | {l['bwd_ms']:.2f} |")
    say("")
    say("Ratios are Keel / PyTorch in images/s (above 1: Keel is faster); per-layer ratios are "
        "PyTorch time / Keel time.")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet5,cnn-small,alexnet-1gpu,resnet50")
    p.add_argument("--batch", type=int, default=0, help="0: each model's standard batch (%s)" % BATCH)
    p.add_argument("--build", default="build-perf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--per-layer", action="store_true")
    p.add_argument("--engine", choices=["auto", "dnnl", "im2col"])
    p.add_argument("--avx512", action="store_true")
    p.add_argument("--as-installed", action="store_true")
    p.add_argument("--quiet-wait", type=float, default=0,
                   help="before each run, wait up to this many seconds for an idle machine")
    p.add_argument("--quiet-idle", type=float, default=0.9, help="what --quiet-wait calls idle (fraction)")
    p.add_argument("--nice", type=int, default=0,
                   help="run both sides at this niceness, and the session's autogroup too (root may give a "
                        "negative one, so that other work on a shared machine yields the cores to the benchmark)")
    p.add_argument("--markdown", help="also write the report to this file")
    p.add_argument("--json", help="also write the raw figures to this file")
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    global NICE
    NICE = args.nice
    if args.nice:
        # With autogroup scheduling, niceness only ranks processes within a
        # session; the session's own weight is set here (Linux, root).
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(args.nice))
        except OSError:
            pass
    started = time.time()
    rows = []
    for name in args.models.split(","):
        rows.append(bench_model(args, name))
        r = rows[-1]
        print(f"{name}: Keel {r['keel']['images_per_s']:.1f} img/s, PyTorch {r['torch']['images_per_s']:.1f} "
              f"img/s, ratio {ratio(r['keel']['images_per_s'], r['torch']['images_per_s']):.2f}", file=sys.stderr)
    text = report(args, rows, started)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
