#!/usr/bin/env bash
# Builds cnclip with the `cuda` cargo feature on a machine that needs neither a GPU nor a CUDA
# toolkit: nvcc, the CUDA headers and the libraries the binary links against come as PyPI wheels
# into a virtual environment, and a stub libcuda.so stands in for the driver at link time (the
# real one, libcuda.so.1, is loaded at run time on the GPU machine).
#
#   tools/build_cuda.sh                          # cargo build --release -p cnclip-cli --features cuda
#   tools/build_cuda.sh --bin cnclip             # extra arguments go to cargo build
#   eval "$(tools/build_cuda.sh --print-env)"    # the environment alone (cargo test, clippy, ...)
#
# Settings (environment):
#   CNCLIP_CUDA_VENV   where the wheels go (default /tmp/cuda-venv); created when missing
#   CUDA_COMPUTE_CAP   GPU architecture the kernels are compiled for, e.g. 80 (A100), 89 (L4),
#                      90 (H100). Default: what nvidia-smi reports, else 80 — PTX for sm_80 is
#                      JIT-compiled by the driver on any newer GPU (once, then cached), while
#                      90 becomes sm_90a code that runs on Hopper alone.
#   NVCC_CCBIN         host C++ compiler for nvcc (default: the first g++ on PATH)
#
# Toolkit: CUDA 13.0 (cudarc feature cuda-13000). Running the binary needs an NVIDIA driver that
# supports CUDA 13.0 (R580 or newer) and, on the library path, libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13: the venv's lib folder below, or the
# same wheels as PyTorch cu130 installs them (tools/bench_gpu.py finds either).
#
# Idempotent: a second run reuses the venv, the stub and the links, and cargo builds
# incrementally.
set -euo pipefail

# Pinned to the 13.0 release: cudarc 0.19 (candle 0.11's) knows CUDA up to 13.4, and PTX from a
# newer nvcc than the driver's CUDA version is refused at load time, so the oldest 13.x keeps the
# widest driver range.
WHEELS=(
    "nvidia-cuda-nvcc==13.0.88"     # nvcc, ptxas, fatbinary, crt headers
    "nvidia-nvvm==13.0.88"          # cicc, libdevice
    "nvidia-cuda-crt==13.0.88"      # crt/host_config.h etc.
    "nvidia-cuda-runtime==13.0.96"  # cuda_runtime.h, cuda_fp16.h, cuda.h, libcudart.so.13
    "nvidia-cuda-cccl==13.0.85"     # cub / thrust / libcu++ (include/cccl)
    "nvidia-cuda-nvrtc==13.0.88"    # libnvrtc.so.13 (cudarc links it)
    "nvidia-curand==10.4.0.35"      # curand headers + libcurand.so.10
    "nvidia-cublas==13.0.2.14"      # cublas headers + libcublas(Lt).so.13
)
CUDARC_VERSION_FEATURE=13000

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CNCLIP_CUDA_VENV:-/tmp/cuda-venv}"

log() { echo "build_cuda: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
# The merged tree every CUDA 13 wheel installs into: bin/, include/, lib/, nvvm/.
CUDA_ROOT_DIR="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13"
if ! "$VENV/bin/python" -m pip show -q "${WHEELS[@]%%==*}" >/dev/null 2>&1 \
    || [[ ! -x "$CUDA_ROOT_DIR/bin/nvcc" ]]; then
    log "installing ${WHEELS[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${WHEELS[@]}"
fi

# Unversioned names for the linker (the wheels ship only the SONAME files).
for lib in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
    name="${lib%%:*}" so="${lib##*:}"
    ln -sfn "lib$name.so.$so" "$CUDA_ROOT_DIR/lib/lib$name.so"
done

# cudarc (as candle enables it) links -lcuda. The driver library is not on PyPI and no GPU is
# needed to build, so link against a stub with SONAME libcuda.so.1 that defines every driver
# entry point cudarc declares, as the toolkit's own lib/stubs/libcuda.so does.
STUB_DIR="$CUDA_ROOT_DIR/lib/stubs"
if [[ ! -f "$STUB_DIR/libcuda.so" ]]; then
    cudarc_version="$(awk '/^name = "cudarc"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$ROOT_DIR/Cargo.lock")"
    if [[ -z "$cudarc_version" ]]; then
        log "Cargo.lock has no cudarc: is the cuda feature declared?"
        exit 1
    fi
    (cd "$ROOT_DIR" && cargo fetch --quiet)
    sys_rs="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_version"/src/driver/sys/mod.rs | head -n 1)"
    mkdir -p "$STUB_DIR"
    grep -oE '\bfn cu[A-Za-z0-9_]+\(' "$sys_rs" | sed -E 's/^fn (.*)\($/void \1(void) {}/' | sort -u \
        >"$STUB_DIR/libcuda_stub.c"
    log "stub libcuda.so: $(wc -l <"$STUB_DIR/libcuda_stub.c") entry points from cudarc $cudarc_version"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB_DIR/libcuda.so" "$STUB_DIR/libcuda_stub.c"
fi

if [[ -z "${CUDA_COMPUTE_CAP:-}" ]]; then
    CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
        | head -n 1 | tr -d '.[:space:]' || true)"
    CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
fi

env_lines() {
    cat <<EOF
export PATH="$CUDA_ROOT_DIR/bin:\$PATH"
export CUDA_ROOT="$CUDA_ROOT_DIR" CUDA_HOME="$CUDA_ROOT_DIR" CUDA_PATH="$CUDA_ROOT_DIR"
export NVCC="$CUDA_ROOT_DIR/bin/nvcc" CUDARC_CUDA_VERSION=$CUDARC_VERSION_FEATURE
export CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP
export LD_LIBRARY_PATH="$CUDA_ROOT_DIR/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
    if [[ -n "${NVCC_CCBIN:-}" ]]; then
        echo "export NVCC_CCBIN=\"$NVCC_CCBIN\""
    fi
}

if [[ "${1:-}" == "--print-env" ]]; then
    env_lines
    exit 0
fi

eval "$(env_lines)"
log "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute capability $CUDA_COMPUTE_CAP, CUDA root $CUDA_ROOT_DIR"
cd "$ROOT_DIR"
if [[ $# -eq 0 ]]; then
    set -- --release -p cnclip-cli
fi
log "cargo build --features cuda $*"
cargo build --features cuda "$@"
log "done; to run: export LD_LIBRARY_PATH=\"$CUDA_ROOT_DIR/lib:\$LD_LIBRARY_PATH\" (or the nvidia/cu13/lib of PyTorch cu130's wheels)"
