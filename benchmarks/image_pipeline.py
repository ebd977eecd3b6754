#!/usr/bin/python3
"""Input pipeline side by side: Keel's image loader (JPEG folder and packed
shards) against torchvision's ImageFolder + DataLoader, decode + augment
images/s per worker thread, on the same generated JPEGs and thread counts.

    /usr/bin/python3 benchmarks/image_pipeline.py --build build --dir /tmp/keel-bench-images \
        --threads 1,2 --pipelines crop,rrc --seconds 15 --repeats 2

bench_images (built by benchmarks/meson.build) generates DIR/train once
(ImageNet-sized JPEGs, quality 90), packs DIR/packed with `keel pack
--short-side 256`, and measures Keel; this script then measures torchvision
on DIR/train with the same recipe:
  crop  Resize(256), RandomCrop(224), RandomHorizontalFlip, ToTensor, Normalize
  rrc   RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize
Both exclude the first batch (worker start-up) and run whole epochs for at
least --seconds; each figure is the best of --repeats runs, since other work
on a small machine only ever slows a run down. The files sit in the page
cache, so this measures decoding and augmentation, not the disk. A Markdown
table goes to benchmarks/results/image_pipeline-<date>.md.
"""
import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time


def torchvision_rate(root, pipeline, workers, batch, seconds):
    import torch
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if pipeline == "crop":
        steps = [transforms.Resize(256), transforms.RandomCrop(224)]
    else:
        steps = [transforms.RandomResizedCrop(224)]
    steps += [transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    dataset = datasets.ImageFolder(root, transforms.Compose(steps))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=True)
    start, images = None, 0
    while start is None or time.perf_counter() - start < seconds:
        for x, _ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += x.shape[0]
    rate = images / (time.perf_counter() - start)
    del loader
    return rate


def keel_rates(binary, args, pipeline):
    command = [binary, "--dir", args.dir, "--images", str(args.images), "--threads", args.threads,
               "--seconds", str(args.seconds), "--batch", str(args.batch), "--pipeline", pipeline]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    sys.stdout.write(out)
    rates = {}
    for line in out.splitlines():
        m = re.match(r"keel (\w+) (\w+) threads=(\d+) images_per_s=([\d.]+)", line)
        if m:
            rates[(m.group(1), int(m.group(3)))] = float(m.group(4))
    return rates, " ".join(command), out


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def versions():
    import PIL
    import torch
    import torchvision
    turbo = subprocess.run(["pkg-config", "--modversion", "libturbojpeg"], capture_output=True, text=True).stdout.strip()
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, " \
           f"libjpeg-turbo {turbo or 'unknown'}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", help="Meson build folder holding benchmarks/bench_images")
    p.add_argument("--dir", default="/tmp/keel-bench-images")
    p.add_argument("--images", type=int, default=1280)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pipelines", default="crop,rrc")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    binary = os.path.join(args.build, "benchmarks", "bench_images")
    threads = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()

    rows, commands, logs = [], [], []
    for pipeline in args.pipelines.split(","):
        best = {}
        for _ in range(args.repeats):
            rates, command, out = keel_rates(binary, args, pipeline)
            logs.append(out)
            for key, rate in rates.items():
                best[key] = max(best.get(key, 0.0), rate)
            for t in threads:
                rate = torchvision_rate(os.path.join(args.dir, "train"), pipeline, t, args.batch, args.seconds)
                print(f"torchvision folder {pipeline} threads={t} images_per_s={rate:.1f} per_thread={rate / t:.1f}")
                best[("torchvision", t)] = max(best.get(("torchvision", t), 0.0), rate)
        commands.append(command)
        for t in threads:
            tv, folder, packed = best[("torchvision", t)], best[("folder", t)], best[("packed", t)]
            rows.append((pipeline, t, tv / t, folder / t, packed / t, folder / tv, packed / tv, packed / folder))

    date = datetime.date.today().isoformat()
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"image_pipeline-{date}.md")
    with open(path, "w") as f:
        f.write(f"# Input pipeline: decode + augment images/s per worker thread ({date})\n\n")
        f.write(f"- machine: {machine()}; load average before the run {load_before[0]:.2f}, "
                f"{load_before[1]:.2f}, {load_before[2]:.2f}\n")
        f.write(f"- software: {versions()}\n")
        f.write(f"- data: {args.images} generated JPEGs (quality 90, ImageNet sizes) in {args.dir}/train, "
                f"packed at short side 256 in {args.dir}/packed; files in the page cache\n")
        f.write(f"- command: `/usr/bin/python3 benchmarks/image_pipeline.py --build {args.build} --dir {args.dir} "
                f"--images {args.images} --threads {args.threads} --pipelines {args.pipelines} "
                f"--seconds {args.seconds:g} --batch {args.batch} --repeats {args.repeats}`\n")
        for c in commands:
            f.write(f"- Keel part: `{c}`\n")
        f.write(f"- best of {args.repeats} runs each; batch {args.batch}; first batch excluded; "
                "torchvision: ImageFolder + DataLoader(num_workers=threads, shuffle=True)\n\n")
        f.write("| pipeline | threads | torchvision /s/thread | keel folder /s/thread | keel packed /s/thread "
                "| folder vs torchvision | packed vs torchvision | packed vs folder |\n")
        f.write("|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.2f}x | {r[6]:.2f}x "
                    f"| {r[7]:.2f}x |\n")
        f.write("\nPipelines: crop = Resize(256) RandomCrop(224) flip Normalize (AlexNet); rrc = "
                "RandomResizedCrop(224) flip Normalize (ResNet; Keel's folder path decodes full size, the shards "
                "hold 256-short-side images).\n\n<details><summary>raw output</summary>\n\n```\n")
        f.write("".join(logs))
        f.write("```\n</details>\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
