#!/usr/bin/env bash
# Everything that needs a GPU: the gpu-marked tests, the attention, window-attention and CLIP-loss
# benchmarks that the performance goals are read from, the whole-model sweeps (`bench all`) and the
# pytest-benchmark suites. Writes logs, JSON and PNGs under $OUT (default benchmarks/results/latest) and,
# at the end of every part, merges what is there into $OUT/merged/<device>-<date>.json: commit that file
# under benchmarks/results/.
#
#   bash benchmarks/run_gpu.sh [tests|kernels|models|suites|all]   (default: all)
#
# Each part fits a 10-minute slot on an H100; run them one per call where calls are time-limited (the
# results of earlier parts stay in $OUT and are merged again each time).
# Works offline: installs vitfast without fetching anything (torch, triton, typer, rich, matplotlib
# and pytest must already be there; timm, open_clip and pytest-benchmark are used when present).
set -uo pipefail
part=${1:-all}
out=${OUT:-benchmarks/results/latest}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1
trap 'python3 benchmarks/collect.py "$out" --results "$out/merged"' EXIT
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
# pyproject's addopts name pytest-benchmark's --benchmark-disable; without the plugin, drop them.
pytest_opts=()
python3 -c "import pytest_benchmark" 2>/dev/null || pytest_opts=(-o addopts=-ra)

if [[ $part == tests || $part == all ]]; then
  python3 -m pytest "${pytest_opts[@]}" -m gpu -q -rs tests 2>&1 | tee "$out/gpu_tests.log"
fi

if [[ $part == kernels || $part == all ]]; then
  sdpa_all=sdpa,sdpa-flash,sdpa-efficient,sdpa-cudnn
  {
    # Goal 1: fwd+bwd at the ViT-B/16 training shape, against every SDPA kernel.
    vitfast bench attention -b 64 --heads 12 --head-dim 64 --dtype bf16 \
      --seq-lens 197,257,577,1025 --backends triton,$sdpa_all,eager \
      --json "$out/attention_vitb_bf16.json" --plot "$out/attention_vitb_bf16.png"
    # Goal 2: forward TFLOP/s at long sequences, head dim 128.
    vitfast bench attention -b 4 --heads 16 --head-dim 128 --dtype bf16 \
      --seq-lens 1024,2048,4096,8192,16384 --backends triton,$sdpa_all \
      --json "$out/attention_d128_bf16.json" --plot "$out/attention_d128_bf16.png"
    # CLIP text tower: causal, short.
    vitfast bench attention -b 256 --heads 8 --head-dim 64 --dtype bf16 --causal \
      --seq-lens 77 --backends triton,$sdpa_all,eager --json "$out/attention_causal77_bf16.json"
    # Swin goal: fwd+bwd at Swin-T's stage shapes, B=64, window 7, shift 3 (bf16 and fp16).
    for dt in bf16 fp16; do
      vitfast bench window -b 64 --stages stage1,stage2,stage3,stage4 --dtype $dt \
        --json "$out/window_swint_$dt.json" --plot "$out/window_swint_$dt.png"
    done
    # Window 12 (three tiles per window; 56×56 pads to 60×60) on the same stage maps.
    vitfast bench window -b 32 --stages stage1,stage2,stage3 --window 12 --shift 6 --dtype bf16 \
      --json "$out/window_w12_bf16.json"
    # CLIP-loss goal 1: N=32768, D=512 bf16 fwd+bwd against open_clip's ClipLoss, in a sweep around it. open_clip
    # is optional (the GPU image may lack it); eager materializes the same N×N logits either way.
    clip_backends=triton,chunked,eager
    python3 -c "import open_clip" 2>/dev/null && clip_backends+=,open_clip
    vitfast bench clip-loss --dim 512 --dtype bf16 --batch-sizes 4096,8192,16384,32768,65536 \
      --backends $clip_backends --warmup 3 --rep 30 \
      --json "$out/clip_loss_d512_bf16.json" --plot "$out/clip_loss_d512_bf16.png"
    # CLIP-loss goal 2: the loss alone, fwd+bwd, at a batch of 1M (2^20, the cap) on one GPU. chunked is left
    # out: its memory is O(N·D) like triton's, so it too would only reach the cap, many times slower.
    vitfast bench clip-loss --dim 512 --dtype bf16 --batch-sizes 4096 --mode fwd+bwd \
      --backends "${clip_backends/chunked,/}" --warmup 3 --rep 10 --max-batch --max-batch-cap 1048576 \
      --json "$out/clip_loss_max_batch_bf16.json"
  } 2>&1 | tee "$out/kernels.log"
fi

if [[ $part == models || $part == all ]]; then
  # Every sweep at its GPU shapes (ViT-B/16, Swin-T, CLIP ViT-B/16 beside timm / open_clip), PNGs, summary.md.
  vitfast bench all --output "$out/all" 2>&1 | tee "$out/models.log"
fi

if [[ $part == suites || $part == all ]]; then
  if [[ ${#pytest_opts[@]} -eq 0 ]]; then
    python3 -m pytest benchmarks -q --benchmark-enable --benchmark-json "$out/pytest_benchmark.json" 2>&1 \
      | tee "$out/pytest_benchmark.log"
  else
    echo "pytest-benchmark is not installed: the suites in benchmarks/ were not run" | tee "$out/pytest_benchmark.log"
  fi
fi
