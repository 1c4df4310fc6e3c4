#!/usr/bin/env bash
# GPU acceptance for segdeploy, in one command on a CUDA machine (about 8 minutes on one datacenter GPU):
#
#   bash scripts/gpu_acceptance.sh            # run everything, results in benchmarks/results/gpu/
#   bash scripts/gpu_acceptance.sh --dry-run  # print the steps without running them (works without a GPU)
#
#  1. pip install -e ".[gpu,dev]" into the current Python ($PYTHON, default python3);
#  2. pytest -m "trt or gpu" (the tests that need TensorRT and a CUDA GPU);
#  3. every zoo model in its small test configuration at 1x3x128x128: FP16 and INT8 ONNX exports, TensorRT
#     engines built from them, each engine verified against PyTorch;
#  4. segdeploy bench on one model: TensorRT against ONNX Runtime (CUDA) and torch (CUDA);
#  5. the C++ runtime built with TensorRT (TENSORRT_ROOT if set, else the tensorrt wheel's libraries with the
#     matching public headers in cpp/third_party/tensorrt), then --check-golden and a short video on TensorRT.
#
# Each step writes its log to benchmarks/results/gpu/logs/ and has a time limit; a failed step does not stop the
# others. The models' export/build/verify chains run --jobs at a time (default 4). summary.md lists every step
# with its status and seconds. Exit 0 when all passed, 1 otherwise, 3 when this machine has no CUDA GPU.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
out=$here/benchmarks/results/gpu
dry_run=0
size=128
models=""  # empty: every zoo model
jobs=4

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --models) models=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_acceptance.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

logs=$out/logs
work=${SEGDEPLOY_GPU_WORK:-${TMPDIR:-/tmp}/segdeploy-gpu-acceptance}  # models, engines, videos: not results
steps=$out/steps.tsv
export python here work logs steps dry_run

# Runs one step: NAME LIMIT_SECONDS COMMAND... (or prints it with --dry-run); appends NAME, status and seconds
# to steps.tsv (a file, so that steps in background jobs count too). Shell functions run through `bash -c`.
step() {
  local name=$1 limit=$2; shift 2
  if ((dry_run)); then
    printf '[%s] timeout %ss: %s\n' "$name" "$limit" "$*"
    return 0
  fi
  local start status=passed
  start=$(date +%s)
  if ! timeout "$limit" "$@" >"$logs/$name.log" 2>&1; then
    status=FAILED
    tail -n 5 "$logs/$name.log" | sed "s/^/  $name: /" >&2
  fi
  local seconds=$(($(date +%s) - start))
  printf '%s\t%s\t%s\n' "$name" "$status" "$seconds" >>"$steps"
  printf '%-40s %s (%ss)\n' "$name" "$status" "$seconds"
}
export -f step

if ((!dry_run)); then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_acceptance.sh: no CUDA GPU here (nvidia-smi -L failed): nothing run" >&2
    exit 3
  fi
  mkdir -p "$logs" "$work"
  : >"$steps"
  nvidia-smi -L >"$out/gpu.txt"
fi
cd "$here"

# ------------------------------------------------------------------------------------------------ 1, 2
step install 240 "$python" -m pip install -q -e ".[gpu,dev]"
step pytest-trt-gpu 300 "$python" -m pytest -q -m "trt or gpu" --junitxml "$out/pytest.xml"

# ------------------------------------------------------------------------------------------------ 3
if [[ -z $models ]]; then
  if ((dry_run)); then
    models="unet,segnet"  # the real run asks the zoo
  else
    models=$("$python" -c 'import segdeploy; print(",".join(segdeploy.list_models()))')
  fi
fi
# The small test configuration of a zoo model as -c key=value options.
config_args() {
  if ((dry_run)); then echo "-c KEY=VALUE"; return; fi
  "$python" -c 'import sys, segdeploy
print(" ".join(f"-c {k}={v}" for k, v in segdeploy.model_info(sys.argv[1]).test_config.items()))' "$1"
}
export -f config_args
step calibration-images 60 "$python" -c "
import sys; from pathlib import Path; import numpy as np; from PIL import Image
from segdeploy.data import make_shapes
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
images, _ = make_shapes(32, size=($size, $size), seed=0)
for i, im in enumerate(images):
    Image.fromarray((np.clip(im * 0.25 + 0.5, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)).save(out / f'{i}.png')
" "$work/calib"

# One model: FP16 and INT8 exports at the small size, their engines, each verified against PyTorch.
model_chain() {
  local model=$1 size=$2 precision onnx cfg_args calib
  read -r -a cfg_args <<<"$(config_args "$model")"
  for precision in fp16 int8; do
    onnx=$work/$model.$precision.onnx
    calib=()
    [[ $precision == int8 ]] && calib=(--calib "$work/calib")
    step "export-$model-$precision" 120 "$python" -m segdeploy export "$model" "${cfg_args[@]}" \
      --input-shape "1x3x${size}x${size}" --precision "$precision" "${calib[@]}" --no-verify -o "$onnx"
    step "build-$model-$precision" 180 "$python" -m segdeploy build "$onnx" --precision "$precision" \
      -o "$work/$model.$precision.engine"
    step "verify-$model-$precision" 120 "$python" -m segdeploy verify "$work/$model.$precision.engine" \
      --model "$model" "${cfg_args[@]}" --report "$logs/verify-$model-$precision.json"
  done
}
IFS=, read -r -a model_list <<<"$models"
for model in "${model_list[@]}"; do
  if ((dry_run)); then
    model_chain "$model" "$size"
    continue
  fi
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
  model_chain "$model" "$size" &
done
wait

# ------------------------------------------------------------------------------------------------ 4
bench_model=${model_list[0]}
step bench 240 "$python" -m segdeploy bench "$bench_model" --small --engine trt --engine ort --engine torch \
  --shape "1x3x512x512" --seconds 3 --report "$out/bench.json" --markdown

# ------------------------------------------------------------------------------------------------ 5
# TensorRT for the C++ build: an SDK (TENSORRT_ROOT), else the wheel's libnvinfer with the vendored headers of the
# same release line; CUDA: the toolkit if CMake finds one, else the nvidia-cuda-runtime-cu12 wheel.
cpp_build() {
  local root=${TENSORRT_ROOT:-} args=()
  if [[ -z $root ]]; then
    root=$work/tensorrt
    "$python" - "$root" "$here/cpp/third_party/tensorrt" <<'EOF'
import glob, os, sys
import tensorrt  # noqa: F401  (loads the libraries)
import tensorrt_libs
root, headers = sys.argv[1], sys.argv[2]
version = tensorrt.__version__
lib = os.path.dirname(tensorrt_libs.__file__)
major_minor = tuple(int(x) for x in version.split(".")[:2])
sets = sorted((tuple(int(x) for x in os.path.basename(d).split(".")), d) for d in glob.glob(f"{headers}/*.*.*.*"))
same_major = [d for v, d in sets if v[0] == major_minor[0] and v[:2] <= major_minor]
if not same_major:
    sys.exit(f"no vendored TensorRT headers for TensorRT {version}: set TENSORRT_ROOT to an SDK")
os.makedirs(f"{root}/lib", exist_ok=True)
for path in glob.glob(f"{lib}/libnvinfer*.so*"):
    name = os.path.basename(path)
    for link in {name, name.split(".so")[0] + ".so"}:
        if not os.path.exists(f"{root}/lib/{link}"):
            os.symlink(path, f"{root}/lib/{link}")
if not os.path.exists(f"{root}/include"):
    os.symlink(f"{same_major[-1]}/include", f"{root}/include")
print(f"TensorRT {version}: libraries {lib}, headers {same_major[-1]}")
EOF
  fi
  args+=("-DTENSORRT_ROOT=$root")
  if ! command -v nvcc >/dev/null; then
    local cuda
    cuda=$("$python" -c 'import os, nvidia.cuda_runtime as c; print(os.path.dirname(c.__file__))')
    args+=("-DSEGDEPLOY_CUDART_INCLUDE_DIRS=$cuda/include" "-DSEGDEPLOY_CUDART_LIBRARY=$(ls "$cuda"/lib/libcudart.so*)")
  fi
  PYTHON=$python SEGDEPLOY_CPP_BUILD_DIR=$work/cpp SEGDEPLOY_CMAKE_ARGS="${args[*]}" bash "$here/cpp/build.sh"
  "$work/cpp/segdeploy_infer" --version | grep -q 'TensorRT [0-9]'
}
cpp_bundle() {
  local model=$1 cfg_args
  read -r -a cfg_args <<<"$(config_args "$model")"
  "$python" -m segdeploy export "$model" "${cfg_args[@]}" --input-shape "1x3x256x256" -o "$work/cpp.onnx"
  "$python" -m segdeploy build "$work/cpp.onnx" --precision fp16 -o "$work/cpp.engine"
  "$python" -m segdeploy bundle "$work/cpp.onnx" --engine "$work/cpp.engine" -o "$work/cpp_bundle" --force
  "$python" -c "
import sys, numpy as np, cv2
w = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*'FFV1'), 25.0, (256, 256))
base = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8), (31, 31), 8)
[w.write(np.roll(base, 5 * i, axis=1)) for i in range(50)]
w.release()" "$work/video.mkv"
}
export -f cpp_build cpp_bundle
step cpp-build 240 bash -c cpp_build
# shellcheck disable=SC2016  # $1 expands in the child shell
step cpp-bundle 180 bash -c 'cpp_bundle "$1"' _ "$bench_model"
step cpp-check-golden 60 "$work/cpp/segdeploy_infer" "$work/cpp_bundle" --check-golden --backend trt
# shellcheck disable=SC2016  # $1..$5 expand in the child shell
step cpp-video 60 bash -c '"$1" "$2" "$3" --backend trt -o "$4" --json >"$5"' _ "$work/cpp/segdeploy_infer" \
  "$work/cpp_bundle" "$work/video.mkv" "$work/masks.mkv" "$out/cpp-video.json"

if ((dry_run)); then
  exit 0
fi
failures=$(awk -F '\t' '$2 != "passed"' "$steps" | wc -l)
{
  echo "# GPU acceptance ($(head -n 1 "$out/gpu.txt"), $(date -u +%Y-%m-%d))"
  echo
  echo "Written by \`bash scripts/gpu_acceptance.sh\`; logs in \`logs/\`."
  echo
  echo "| step | status | seconds |"
  echo "| --- | --- | --- |"
  awk -F '\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$steps"
} >"$out/summary.md"
echo "summary: $out/summary.md ($failures failed)"
((failures == 0))
