#!/usr/bin/env bash
# The GPU check of the CUDA backend, in two halves:
#
#   benchmarks/gpu-check.sh prepare [BUILD]   on the development machine
#       builds BUILD (default build-cuda) with -Dcuda=enabled, and fills
#       .carry/gpu/ with what the GPU machine lacks: the non-system shared
#       libraries the binaries link (OpenBLAS, oneDNN, cJSON, CMocka, libgomp,
#       ..., packed as lib.tar.xz to fit the device tool's 64 MiB carry),
#       the hand-written cuDNN device profile, and a 10000-image subset of
#       Fashion-MNIST. Prints the carry list for the device tool.
#
#   benchmarks/gpu-check.sh run [BUILD]       on the GPU machine
#   (or `tests` / `bench` for one half, when one call cannot hold both)
#       (carry BUILD and .carry). Finds cuDNN and cuBLAS (system, CUDA
#       toolkit or PyTorch's nvidia/* wheels), saves cuDNN's real device
#       profile, runs the GPU-free cuDNN tier against it, the CUDA op tests,
#       the op tests of every area on cuda:0 (KEEL_TEST_DEVICES), times
#       LeNet-5 training (keel on cuda:0, PyTorch on the same GPU when it is
#       installed, keel on the CPU), the zoo against PyTorch on the same GPU
#       (benchmarks/gpu_vs_pytorch.py: alexnet b128, vgg16 b64, resnet50 b128,
#       IEEE fp32 and TF32), AlexNet's towers on one stream against two
#       streams (model parallelism), and last the long training and
#       model-zoo tests on cuda:0. Steps that would pass the deadline
#       (GPU_CHECK_SECONDS, default 540 s after the start) are skipped and
#       listed as such; give the device call timeout_s 600. Logs go to $OUT as gpu-check.log, logs.tar.gz, the
#       real device profile and a CSV of cuDNN workspaces (the device tool
#       returns at most 8 files); a short table is printed last.
#
# Everything a run writes is under $OUT (default ./gpu-check-out).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
BUILD="${2:-build-cuda}"
CARRY="$ROOT/.carry/gpu"
PROFILE_NAME=h200-deviceprop.json
SUBSET=10000

die() { echo "gpu-check: $*" >&2; exit 1; }

# ---- prepare (development machine) -------------------------------------------------

# The shared libraries an ELF file needs from the distribution's folders,
# less glibc, the compiler's runtime, zlib and the CUDA libraries (the GPU
# machine has its own, newer ones, which PyTorch there needs too).
system_libs() {
    ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\/(usr\/)?lib\/x86_64-linux-gnu\// {print $3}' |
        grep -Ev '/(libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|libz|ld-linux[^/]*)\.so' |
        grep -Ev '/lib(cuda|cudart|cudnn[^/]*|cublas[^/]*|nvrtc[^/]*)\.so' | sort -u
}

# Fashion-MNIST's first $SUBSET training images and labels, as IDX files.
subset_dataset() {
    local src="${KEEL_DATA_DIR:-/usr/share/datasets/fashion-mnist}" dst="$CARRY/fashion-mnist"
    [ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "no Fashion-MNIST under $src: the GPU run uses synthetic data"; return; }
    mkdir -p "$dst"
    python3 - "$src" "$dst" "$SUBSET" <<'PY'
import gzip, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for split in ("train", "t10k"):
    for kind, dims in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{split}-{kind}-ubyte.gz"
        data = gzip.open(f"{src}/{name}").read()
        head = 4 + 4 * dims
        shape = list(struct.unpack(">" + "I" * dims, data[4:head]))
        keep = min(n if split == "train" else n // 5, shape[0])
        item = 1
        for d in shape[1:]:
            item *= d
        shape[0] = keep
        with gzip.open(f"{dst}/{name}", "wb", compresslevel=9) as f:
            f.write(data[:4] + struct.pack(">" + "I" * dims, *shape) + data[head:head + keep * item])
PY
}

prepare() {
    cd "$ROOT" || die "no repository at $ROOT"
    if [ ! -f "$BUILD/build.ninja" ]; then
        meson setup "$BUILD" -Dcuda=enabled -Dbuildtype=release || die "meson setup failed"
    fi
    ninja -C "$BUILD" || die "the build failed"
    rm -rf "$CARRY"
    mkdir -p "$CARRY/lib"
    local elves
    elves=$(find "$BUILD" -maxdepth 3 -type f \( -name 'libkeel.so*' -o -name 'test_*' -o -name keel \) -perm -u+x 2>/dev/null)
    elves="$elves $(find "$BUILD" -maxdepth 1 -name 'libkeel.so.*.*' -type f)"
    for lib in $(system_libs $elves); do
        cp -L "$lib" "$CARRY/lib/"
        # and what those need in turn (libgfortran for OpenBLAS)
        for dep in $(system_libs "$lib"); do cp -L "$dep" "$CARRY/lib/" 2>/dev/null; done
    done
    local profile
    for profile in "${KEEL_CUDNN_DEVICEPROP:-}" "$ROOT/../shared/docs/$PROFILE_NAME" "$ROOT/shared/docs/$PROFILE_NAME"; do
        if [ -n "$profile" ] && [ -f "$profile" ]; then cp "$profile" "$CARRY/$PROFILE_NAME"; break; fi
    done
    [ -f "$CARRY/$PROFILE_NAME" ] || echo "warning: no $PROFILE_NAME found; the GPU run saves the real one only"
    subset_dataset
    echo "bundled into $CARRY:"
    ls -la "$CARRY/lib"
    # The device tool carries 64 MiB in all; oneDNN and OpenBLAS alone are
    # ~75 MiB, a sixth of that with xz.
    tar -C "$CARRY" -cJf "$CARRY/lib.tar.xz" lib && rm -rf "$CARRY/lib" || die "packing the libraries failed"
    ls -la "$CARRY"
    du -sh "$BUILD" "$CARRY"
    local total
    total=$(du -scm "$BUILD" "$CARRY" | tail -n 1 | cut -f1)
    [ "$total" -lt 62 ] || echo "warning: the carry is $total MiB; the device tool takes 64 MiB in all"
    echo "carry: [\"$BUILD\", \".carry\"]   command: bash benchmarks/gpu-check.sh run $BUILD"
}

# Unpacks the carried libraries (xz through tar, or Python's lzma where the
# machine has no xz) and prints their folder.
unpack_libs() {
    local dir="${TMPDIR:-/tmp}/keel-gpu-lib"
    rm -rf "$dir" && mkdir -p "$dir"
    if [ -f "$CARRY/lib.tar.xz" ]; then
        tar -C "$dir" -xJf "$CARRY/lib.tar.xz" 2>/dev/null ||
            python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
                "$CARRY/lib.tar.xz" "$dir" || echo "gpu-check: cannot unpack $CARRY/lib.tar.xz" >&2
    fi
    echo "$dir/lib"
}

# ---- run (GPU machine) ------------------------------------------------------------------

OUT="${OUT:-$ROOT/gpu-check-out}"
LOGS="$OUT/logs"
SUMMARY=()
KEEL_LIBS=""

note() { echo "== $*"; }
STARTED=$(date +%s)
DEADLINE=$((STARTED + ${GPU_CHECK_SECONDS:-540}))
# True when `need` seconds are left before the deadline; records a skip otherwise.
time_left() {
    local need="$1" what="$2"
    if [ $(( $(date +%s) + need )) -gt "$DEADLINE" ]; then
        record "$what" "skipped: would pass the ${GPU_CHECK_SECONDS:-540} s deadline"
        return 1
    fi
}
record() { SUMMARY+=("$(printf '%-44s %s' "$1" "$2")"); }

# Folders holding libcudnn / libcublas / libcudart: the loader's cache, the
# CUDA toolkit, and the nvidia/* wheels PyTorch installs.
cuda_lib_dirs() {
    local dirs=()
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && dirs+=("$d")
    done
    if command -v python3 >/dev/null; then
        local site
        site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
        if [ -n "$site" ]; then
            for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && dirs+=("$d"); done
        fi
    fi
    local IFS=:
    echo "${dirs[*]}"
}

seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# N from CMocka's closing "[  PASSED  ] N test(s)." (or SKIPPED, FAILED) line.
summary_count() {
    local n
    n=$(grep -E "^\[  $1 *\] [0-9]+ test" "$2" | tail -n 1 | sed -E 's/^[^]]*\] ([0-9]+).*/\1/')
    echo "${n:-0}"
}

# Runs one test executable with a time limit; logs to $LOGS/NAME.log.
run_test() {
    local name="$1" limit="$2"
    shift 2
    local exe="$ROOT/$BUILD/tests/test_$name"
    if [ ! -x "$exe" ]; then record "test $name" "missing"; return; fi
    local start end rc
    start=$(date +%s.%N)
    (cd "$ROOT/$BUILD" && env LD_LIBRARY_PATH="$KEEL_LIBS" "$@" timeout "$limit" "$exe") >"$LOGS/$name${TAG:-}.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    local log="$LOGS/$name${TAG:-}.log"
    record "test $name${TAG:-}" "$(printf 'rc=%d passed=%s skipped=%s failed=%s %ss' "$rc" "$(summary_count PASSED "$log")" \
        "$(summary_count SKIPPED "$log")" "$(summary_count FAILED "$log")" "$(seconds_between "$start" "$end")")"
    [ "$rc" -eq 0 ] || { echo "--- $name failed (rc=$rc); its last lines:"; tail -n 25 "$LOGS/$name${TAG:-}.log"; }
}

# Seconds of wall time of one keel train run.
time_keel_train() {
    local device="$1" label="$2"
    local keel="$ROOT/$BUILD/src/cli/keel" start end rc
    [ -x "$keel" ] || { record "lenet5 keel $label" "no keel executable"; return; }
    start=$(date +%s.%N)
    LD_LIBRARY_PATH="$KEEL_LIBS" timeout 300 "$keel" train --model lenet5 --device "$device" --epochs 1 --subset "$SUBSET" --no-test \
        --batch 64 --progress lines >"$LOGS/train-$label.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    local seconds
    seconds=$(seconds_between "$start" "$end")
    if [ "$rc" -eq 0 ]; then
        record "lenet5 1 epoch x$SUBSET, keel $label" "$(awk -v s="$seconds" -v n="$SUBSET" \
            'BEGIN { printf "%.1fs  %.0f img/s (wall, incl. start-up)", s, n / s }')"
    else
        record "lenet5 keel $label" "failed rc=$rc (see logs/train-$label.log)"
        tail -n 15 "$LOGS/train-$label.log"
    fi
}

# The same LeNet-5 and the same SGD in PyTorch, on the same data.
time_torch() {
    command -v python3 >/dev/null || { record "lenet5 pytorch" "no python3"; return; }
    python3 - "$CARRY/fashion-mnist" "$SUBSET" >"$LOGS/torch.log" 2>&1 <<'PY'
import gzip, os, struct, sys, time
import numpy as np
import torch, torch.nn as nn
folder, n = sys.argv[1], int(sys.argv[2])
def idx(name):
    data = gzip.open(os.path.join(folder, name)).read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
try:
    images = idx("train-images-idx3-ubyte.gz")[:n].astype(np.float32) / 255.0
    labels = idx("train-labels-idx1-ubyte.gz")[:n].astype(np.int64)
except OSError:
    rng = np.random.default_rng(1)
    images = rng.random((n, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, n)
images = (images - images.mean()) / images.std()
dev = torch.device("cuda")
x_all = torch.tensor(images).unsqueeze(1).to(dev)
y_all = torch.tensor(labels).to(dev)
model = nn.Sequential(
    nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
    nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
    nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
    nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
batch = 64
def epoch():
    total = 0.0
    for i in range(0, n - batch + 1, batch):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_all[i:i + batch]), y_all[i:i + batch])
        loss.backward()
        opt.step()
        total += loss.item()
    return total / (n // batch)
epoch()  # warm-up: cuDNN autotuning, allocator
torch.cuda.synchronize()
start = time.perf_counter()
mean_loss = epoch()
torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(f"torch {torch.__version__} cudnn {torch.backends.cudnn.version()} on {torch.cuda.get_device_name()}")
print(f"RESULT {seconds:.3f} {n / seconds:.0f} {mean_loss:.4f}")
PY
    local line
    line=$(grep '^RESULT' "$LOGS/torch.log")
    if [ -n "$line" ]; then
        set -- $line
        record "lenet5 1 epoch x$SUBSET, pytorch cuda" "$(printf '%.2fs  %s img/s (2nd epoch, mean loss %s)' "$2" "$3" "$4")"
    else
        record "lenet5 pytorch" "failed (see logs/torch.log)"
        tail -n 10 "$LOGS/torch.log"
    fi
}

run() {
    cd "$ROOT" || die "no repository at $ROOT"
    [ -f "$BUILD/libkeel.so" ] || die "no $BUILD/libkeel.so: carry the build folder (prepare it with 'prepare')"
    mkdir -p "$LOGS"
    exec > >(tee "$OUT/gpu-check.log") 2>&1
    local cuda_dirs libs_dir
    cuda_dirs=$(cuda_lib_dirs)
    libs_dir=$(unpack_libs)
    # For Keel's programs only: PyTorch keeps the machine's own library path.
    KEEL_LIBS="$ROOT/$BUILD:$libs_dir:$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "library path for keel: $KEEL_LIBS"
    note "machine"
    nvidia-smi -L 2>&1 || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1
    note "libraries"
    local libs
    libs=$(LD_LIBRARY_PATH="$KEEL_LIBS" ldd "$BUILD/libkeel.so" "$BUILD/tests/test_cuda_ops" 2>&1)
    echo "$libs" | grep -E 'cudnn|cublas|cudart|openblas|not found' | sort -u
    if echo "$libs" | grep -q 'not found'; then
        record "libraries" "MISSING: $(echo "$libs" | grep 'not found' | awk '{print $1}' | sort -u | tr '\n' ' ')"
    else
        record "libraries" "all found"
    fi
    LD_LIBRARY_PATH="$KEEL_LIBS" "$BUILD/src/cli/keel" devices 2>&1 | tee "$LOGS/devices.log"

    if [ "$PHASES" != bench ]; then
        note "cuDNN device profile and the GPU-free tier"
        local profile_env=()
        [ -f "$CARRY/$PROFILE_NAME" ] && profile_env=(KEEL_CUDNN_DEVICEPROP="$CARRY/$PROFILE_NAME")
        TAG=-handwritten run_test cuda_graph 300 "${profile_env[@]}" KEEL_CUDNN_SAVE_DEVICEPROP="$OUT/$PROFILE_NAME"
        if [ -s "$OUT/$PROFILE_NAME" ]; then
            record "real device profile" "saved to \$OUT/$PROFILE_NAME"
            TAG=-real run_test cuda_graph 300 KEEL_CUDNN_DEVICEPROP="$OUT/$PROFILE_NAME" \
                KEEL_CUDNN_REPORT="$OUT/cudnn-workspaces.csv"
        else
            record "real device profile" "not saved (see logs/cuda_graph-handwritten.log)"
        fi

        note "CUDA op tests (cuda vs cpu) and LeNet-5 training"
        run_test cuda_ops 300 KEEL_DATA_DIR="$CARRY/fashion-mnist"
        note "the op tests of every area on cuda:0"
        for name in conv pool norm dense elementwise loss graph planner; do
            TAG=-on-cuda run_test "$name" 120 KEEL_TEST_DEVICES=cuda:0 KEEL_DATA_DIR="$CARRY/fashion-mnist"
        done
    fi

    if [ "$PHASES" != tests ]; then
        note "LeNet-5 training speed"
        export KEEL_DATA_DIR="$CARRY/fashion-mnist"
        time_keel_train cuda:0 cuda
        time_torch
        time_keel_train cpu cpu
        if LD_LIBRARY_PATH="$KEEL_LIBS" "$BUILD/src/cli/keel" help 2>&1 | grep -qw bench; then
            LD_LIBRARY_PATH="$KEEL_LIBS" timeout 300 "$BUILD/src/cli/keel" bench --model lenet5 --device cuda:0 \
                >"$LOGS/bench-lenet5.log" 2>&1
            record "keel bench lenet5 cuda:0" "rc=$? (logs/bench-lenet5.log)"
        fi

        note "the zoo against PyTorch on the same GPU"
        if command -v python3 >/dev/null && time_left 280 "gpu_vs_pytorch"; then
            timeout 270 python3 "$ROOT/benchmarks/gpu_vs_pytorch.py" --keel "$ROOT/$BUILD/src/cli/keel" \
                --keel-library-path "$KEEL_LIBS" --timeout 120 --per-layer --markdown "$OUT/gpu-vs-pytorch.md" >"$LOGS/gpu-vs-pytorch.log" 2>&1 \
                < /dev/null
            record "zoo vs pytorch (gpu_vs_pytorch.py)" "rc=$? (\$OUT/gpu-vs-pytorch.md)"
            grep -E '^[a-z0-9]+ b[0-9]+ ' "$LOGS/gpu-vs-pytorch.log" | while read -r line; do record "  $line" ""; done
            grep -E '^[a-z0-9]+ b[0-9]+ ' "$LOGS/gpu-vs-pytorch.log"
        fi

        note "model parallelism: AlexNet's towers on one stream, on two, and on two that copy"
        local split copies
        for split in cuda:0 cuda:0,cuda:0 cuda:0,cuda:0+copies; do
            time_left 60 "alexnet towers on $split" || continue
            # +copies: the path of GPUs without peer-to-peer, each stream copying what it reads.
            copies=""
            [ "${split%+copies}" != "$split" ] && copies="--device-copies"
            LD_LIBRARY_PATH="$KEEL_LIBS" timeout 120 "$BUILD/src/cli/keel" bench --model alexnet --batch 128 \
                --device "${split%+copies}" $copies --iters 10 >"$LOGS/bench-alexnet-$split.log" 2>&1
            record "alexnet b128 on $split" "rc=$? $(grep -E 'training step' "$LOGS/bench-alexnet-$split.log" | head -1)"
        done

        note "resnet50 fed from packed shards against synthetic data"
        if time_left 150 "resnet50 shards vs synthetic"; then
            local images_dir="$OUT/images" keel="$BUILD/src/cli/keel"
            # bench_images writes ImageNet-sized JPEGs and packs them (short side 256).
            LD_LIBRARY_PATH="$KEEL_LIBS" timeout 120 "$BUILD/benchmarks/bench_images" --dir "$images_dir" --images 2560 \
                --classes 10 --threads "$(nproc)" --seconds 1 --pipeline rrc >"$LOGS/bench-images.log" 2>&1
            record "image pipeline (rrc, all cores)" "$(grep -E '^keel packed' "$LOGS/bench-images.log" | tail -1)"
            LD_LIBRARY_PATH="$KEEL_LIBS" timeout 150 "$keel" train --model resnet50 --data "$images_dir/packed" \
                --device cuda:0 --epochs 3 --batch 128 --workers "$(( $(nproc) - 2 ))" --no-test --schedule constant \
                --lr 0.01 --progress lines >"$LOGS/train-resnet50-shards.log" 2>&1
            local fed synthetic
            fed=$(grep -E '^epoch 3/3 ' "$LOGS/train-resnet50-shards.log" | grep -oE '[0-9,]+ img/s' | tail -1 | tr -d ',')
            LD_LIBRARY_PATH="$KEEL_LIBS" timeout 120 "$keel" bench --model resnet50 --batch 128 --device cuda:0 \
                --iters 10 --json >"$LOGS/bench-resnet50.log" 2>&1
            synthetic=$(grep -oE '"train_images_per_second": [0-9.]+' "$LOGS/bench-resnet50.log" | awk '{print $2}')
            record "resnet50 b128 from shards (3rd epoch)" "${fed:-failed (logs/train-resnet50-shards.log)}"
            record "resnet50 b128 synthetic (keel bench)" "${synthetic:-failed} img/s; shards/synthetic = $(awk -v a="${fed% img/s}" \
                -v b="${synthetic:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }') (target >= 0.9)"
            rm -rf "$images_dir"
        fi

        note "DCGAN on the GPU"
        if time_left 60 "keel gan on cuda:0"; then
            LD_LIBRARY_PATH="$KEEL_LIBS" timeout 90 "$BUILD/src/cli/keel" gan --device cuda:0 --epochs 1 --subset 6400 \
                --no-score --out "$OUT/gan" --progress lines >"$LOGS/gan-cuda.log" 2>&1
            record "keel gan --device cuda:0 (1 epoch x6400)" "rc=$? $(grep -E '^epoch 1/1' "$LOGS/gan-cuda.log" | tail -1)"
        fi
    fi

    if [ "$PHASES" != bench ]; then
        note "the long tests on cuda:0 (training, the model zoo)"
        for name in train models; do
            time_left 150 "test $name-on-cuda" || continue
            TAG=-on-cuda run_test "$name" 150 KEEL_TEST_DEVICES=cuda:0 KEEL_DATA_DIR="$CARRY/fashion-mnist"
        done
    fi

    tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$LOGS"
    echo
    echo "==================== gpu-check summary ===================="
    printf '%s\n' "${SUMMARY[@]}"
}

PHASES=all
case "$MODE" in
prepare) prepare ;;
run) run ;;
tests) PHASES=tests; run ;;
bench) PHASES=bench; run ;;
*) echo "usage: $0 prepare|run|tests|bench [BUILD]   (see the comment at the top)" >&2; exit 2 ;;
esac
