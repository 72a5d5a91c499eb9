#!/usr/bin/env bash
# Builds `daps` with the `cuda` feature on a machine without the CUDA toolkit (no GPU needed),
# from NVIDIA's PyPI wheels: nvcc, its front ends and headers, and the libraries candle links
# (cuBLAS, cuBLASLt, cuRAND, NVRTC). The driver library (libcuda.so.1) is not on PyPI; a link-time
# stub with the driver's entry points is built instead, and the real one is used at run time.
#
#   scripts/cuda-build-from-pypi.sh [TOOLKIT_DIR]        (default /opt/cuda-pypi)
#
# The binary is target-cuda/release/daps, for compute capability $CUDA_COMPUTE_CAP (default 90,
# Hopper), and the device tests' binary (tests/device.rs) target-cuda/release/device-test
# (scripts/gpu-check.sh packs both for a GPU machine). On the GPU machine it needs a CUDA 13.0 runtime (driver ≥ 580):
#   LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib ./daps train …
# With a CUDA toolkit installed, plain `cargo build --release --features cuda` does the same.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-/opt/cuda-pypi}
CAP=${CUDA_COMPUTE_CAP:-90}
mkdir -p "$T/wheels" "$T/stubs"
for p in nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3 \
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 -d "$T/wheels" "$p"
done
for w in "$T"/wheels/*.whl; do unzip -q -o "$w" -d "$T"; done
CU=$T/nvidia/cu13
mkdir -p "$CU/targets" && ln -sfn .. "$CU/targets/x86_64-linux"   # nvcc.profile's layout
(cd "$CU/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done \
  && ln -sf libcurand.so.10 libcurand.so)
cargo fetch -q
SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -1)
grep -o -E 'pub unsafe fn cu[A-Za-z0-9_]*' "$SYS" | awk '{print $4}' | sort -u \
  | awk '{print "int " $1 "(void) { return 999; }"}' > "$T/stubs/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$T/stubs/libcuda.so" "$T/stubs/cuda_stub.c"
PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_COMPUTE_CAP=$CAP \
  RUSTFLAGS="-L native=$T/stubs -L native=$CU/lib" \
  cargo build --release --features cuda --bin daps --target-dir target-cuda
PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_COMPUTE_CAP=$CAP \
  RUSTFLAGS="-L native=$T/stubs -L native=$CU/lib" \
  cargo test --release --features cuda --test device --no-run --target-dir target-cuda \
  --message-format=json | grep -o '"executable":"[^"]*device-[^"]*"' | tail -1 | cut -d'"' -f4 \
  | xargs -I{} cp {} target-cuda/release/device-test
echo "built target-cuda/release/daps and target-cuda/release/device-test (sm_$CAP)"
