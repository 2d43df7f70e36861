#!/usr/bin/env bash
# Everything that needs a GPU. Run from the repository root:
#
#   bash benchmarks/run_gpu.sh [kernels|tests|models|peers|suites|maxbatch|siglip|tune|all]   (default: kernels)
#
# kernels (the default) decides kernels/dispatch.json, in this order:
#   1. benchmarks/check_tiles.py: every tile of every kernel for this GPU's family, run explicitly in bf16,
#      fp16 and fp32, forward and every gradient, against the float64 oracle (tests/kernels/oracle.py's
#      rule)                                                                     → $OUT/tile_check.json
#   2. the window-12 backward (the one kernel relying on barrier ordering) under compute-sanitizer's
#      racecheck, where the image has it                                           → $OUT/racecheck.json
#   3. the sweeps the table is read from: attention (fwd, fwd+bwd; bf16, fp16 and fp32; N 197..4096 at head
#      dims 64 and 128; causal N=77 for CLIP's text tower) against every SDPA kernel, window attention at
#      Swin-T's stages (window 7 and 12) against SDPA, the CLIP loss (D 512, N 4096..32768) against chunked
#   4. benchmarks/dispatch_table.py: the new table, rows only where step 1 passed  → $OUT/dispatch.json
# Then copy $OUT/dispatch.json to kernels/dispatch.json and $OUT/merged/<device>-<date>.json (every JSON of
# the run) to benchmarks/results/, and commit both.
# tests: the gpu-marked tests. models: `vitfast bench all` (whole models beside timm and open_clip, and every
# kernel sweep beside its peers). peers: the kernels beside what a user would run instead today, at the
# training shapes: window attention beside FlexAttention and timm's WindowAttention, attention beside
# FlexAttention, and the whole attention layer beside timm's Attention (flex compiles once per case, untimed).
# suites: the pytest-benchmark suites. maxbatch: the CLIP loss's largest batch, up to 2^20. siglip: the SigLIP
# loss's sweep (D 768, N 8192..65536, bf16) and its largest batch, up to 2^20 (~2 min on paper). tune: opt-in
# timing of every candidate attention tile at the sweep shapes (VITFAST_AUTOTUNE), winners and times
# → $OUT/tuned_tiles.json, to fold into kernels/tiles.json by hand. all: every part but tune.
#
# $OUT (default benchmarks/results/latest) keeps few files, since a device call brings back at most 8:
# run_gpu.log (everything printed), tile_check.json, racecheck.json, dispatch.json and merged/. Each command's
# own JSON and PNG go to $WORK (default: a new folder under $TMPDIR or /tmp), and their JSON into merged/.
# Works offline: installs vitfast without fetching anything (torch, triton, typer, rich, matplotlib and pytest
# must be there; timm, open_clip and pytest-benchmark are used when present). Exits 1 if anything failed.
#
# Time budget of `kernels` on one H100/H200 from a bare machine: about 6.5 minutes, worked out on paper (no
# GPU has run this yet). Assumed: a Python process costs ~5 s to import torch and vitfast and start CUDA
# (the import takes 4.3 s on the 2-core CPU machine this was written on); a Triton compile ~2 s per kernel
# variant (1.2-1.3 s each through tests/kernels/aot.py on that machine); GPU time = FLOPs / 200 TFLOP/s for
# every backend (a pessimistic guess, not a measurement); Triton's disk cache shares compiles between
# processes, and step 1 compiles the tiles the ViT-length sweeps use. Per step:
#   install and versions, cold imports                                                      30 s
#   1. tile check: 44 runs, a fresh worker process each, 12 at a time (44 × 5 s / 12),
#      ~130 compiles (× 2 s / 12), fp64 oracles and the kernels themselves (a few s)       60 s
#   2. racecheck: one small backward, only that kernel instrumented              90 s at most (its timeout)
#   3. attention, bf16 and fp16 × d64, d128, 5 backends:
#        N 197..1025 at B=64: one fwd+bwd pass over the 4 lengths is 1.0 TFLOP (14·B·H·N²·D), × 36 calls
#        (5 + 30 + 1 for memory) × 5 backends ≈ 1.2 s of GPU with fwd; no new compiles: 8 s;
#        N 2048, 4096 at B=8: 1.8 TFLOP a pass, × 14 calls × 5 ≈ 0.8 s; 4 new compiles: 14 s; 4 × 22   90 s
#      causal N=77 at B=256, bf16 and fp16: 2 × 7                                           15 s
#      fp32, d64 and d128, N 197..1025 at B=64, 3 + 10 calls (TF32: 3 new compiles): 2 × 16  30 s
#      window, bf16 and fp16 × window 7, 12: 4 stages at B=64, triton and sdpa, 5 + 30 calls, ~4 new
#      compiles (no qkv bias, unlike step 1): 4 × 14                                        55 s
#      CLIP loss bf16, N 4096..32768, 2 + 10 calls: 3 new compiles; at N=32768 fwd+bwd is 6.6 TFLOP   15 s
#   4. merge, dispatch table                                                                10 s
# about 395 s. Steps 1 to 3 also stop at a deadline, $RUN_GPU_BUDGET_S (default 450 s) after the start: a
# command that would run past it is cut short (or skipped, and logged as such), so step 4 and the merge
# always run and the part ends within 8 minutes (450 + 10 s to kill + 10 s) even where these estimates fail.
set -uo pipefail
part=${1:-kernels}
case $part in
  kernels | tests | models | peers | suites | maxbatch | siglip | tune | all) ;;
  *) echo "usage: bash benchmarks/run_gpu.sh [kernels|tests|models|peers|suites|maxbatch|siglip|tune|all] (got '$part')" >&2
     exit 2 ;;
esac
out=${OUT:-benchmarks/results/latest}
mkdir -p "$out" || exit 1
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/vitfast-run_gpu.XXXXXX")}
mkdir -p "$work" || exit 1
budget=${RUN_GPU_BUDGET_S:-450}
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1
failures=()
deadline=$((1 << 30))

# step LIMIT COMMAND...: run COMMAND for at most LIMIT seconds, and not past $deadline; note a failure.
step() {
  local limit=$1
  shift
  local left=$((deadline - SECONDS))
  if ((left < 20)); then
    echo "SKIPPED (time budget spent): $*"
    failures+=("skipped, no time left: ${*:1:3} … ${*: -1}")
    return
  fi
  ((limit > left)) && limit=$left
  timeout -k 10 "$limit" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "TIMED OUT after $limit s: $*"
  ((rc != 0)) && failures+=("exit code $rc: ${*:1:3} … ${*: -1}")
  return 0
}

kernels() {
  deadline=$budget  # seconds since the script started
  rm -f "$out/tile_check.json" "$out/racecheck.json" "$out/dispatch.json"
  echo "== 1. every tile against the float64 oracle"
  step 240 python3 benchmarks/check_tiles.py --out "$out/tile_check.json"
  echo "== 2. the window-12 backward under racecheck"
  step 120 python3 benchmarks/check_tiles.py --racecheck --timeout 90 --out "$out/racecheck.json"
  echo "== 3. the sweeps the dispatch table is read from (fwd+bwd decides; in $work)"
  sdpa_all=sdpa,sdpa-flash,sdpa-efficient,sdpa-cudnn
  for dt in bf16 fp16; do
    for hd in 64 128; do
      heads=$((768 / hd))  # ViT-B's width
      # ViT lengths at the ViT-B/16 training batch, then long sequences at a smaller one.
      step 120 vitfast bench attention -b 64 --heads "$heads" --head-dim "$hd" --dtype "$dt" \
        --seq-lens 197,257,577,1025 --backends "triton,$sdpa_all" --warmup 5 --rep 30 \
        --json "$work/attention_${dt}_d${hd}_vit.json"
      step 120 vitfast bench attention -b 8 --heads "$heads" --head-dim "$hd" --dtype "$dt" \
        --seq-lens 2048,4096 --backends "triton,$sdpa_all" --warmup 3 --rep 10 \
        --json "$work/attention_${dt}_d${hd}_long.json"
    done
    # Swin-T's four stages at B=64: window 7 (stage 4's 7×7 map is one unshifted window), then window 12
    # (three 64-token tiles per window, maps padded; stage 4 shrinks it to 7).
    for window in 7 12; do
      wshift=$((window / 2))
      step 120 vitfast bench window -b 64 --stages stage1,stage2,stage3,stage4 --window "$window" \
        --shift "$wshift" --dtype "$dt" --backends triton,sdpa --warmup 5 --rep 30 \
        --json "$work/window_${dt}_w${window}.json"
    done
    if [[ $dt == bf16 ]]; then
      step 120 vitfast bench clip-loss --dim 512 --dtype bf16 --batch-sizes 4096,8192,16384,32768 \
        --backends triton,chunked --warmup 2 --rep 10 --json "$work/clip_loss_bf16_d512.json"
    fi
    # CLIP's text tower: causal, 77 tokens, 8 heads of 64.
    step 120 vitfast bench attention -b 256 --heads 8 --head-dim 64 --dtype "$dt" --causal --seq-lens 77 \
      --backends "triton,$sdpa_all" --warmup 5 --rep 30 --json "$work/attention_${dt}_causal77.json"
  done
  for hd in 64 128; do
    heads=$((768 / hd))
    step 120 vitfast bench attention -b 64 --heads "$heads" --head-dim "$hd" --dtype fp32 \
      --seq-lens 197,257,577,1025 --backends "triton,$sdpa_all" --warmup 3 --rep 10 \
      --json "$work/attention_fp32_d${hd}_vit.json"
  done
  deadline=$((1 << 30))
  echo "== 4. the dispatch table"
  merged=$(python3 benchmarks/collect.py "$out" "$work" --results "$out/merged")
  python3 benchmarks/dispatch_table.py "$work" --checks "$out/tile_check.json" --out "$out/dispatch.json" \
    --source "benchmarks/results/${merged##*/}" || failures+=("the dispatch table")
}

main() {
  echo "== run_gpu.sh $part, $(date -u +%FT%TZ); OUT=$out WORK=$work"
  trap 'python3 benchmarks/collect.py "$out" "$work" --results "$out/merged"' EXIT
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
  python3 -c "import torch, triton; p = torch.cuda.get_device_properties(0); \
print(p.name, f'sm_{p.major}{p.minor}', 'torch', torch.__version__, 'triton', triton.__version__)" || return 1
  # pyproject's addopts name pytest-benchmark's --benchmark-disable; without the plugin, drop them.
  local pytest_opts=()
  python3 -c "import pytest_benchmark" 2>/dev/null || pytest_opts=(-o addopts=-ra)

  if [[ $part == kernels || $part == all ]]; then
    kernels
  fi
  if [[ $part == tests || $part == all ]]; then
    python3 -m pytest "${pytest_opts[@]}" -m gpu -q -rs tests || failures+=("the gpu tests")
  fi
  if [[ $part == models || $part == all ]]; then
    # Every sweep at its GPU shapes (ViT-B/16, Swin-T, CLIP ViT-B/16 beside timm / open_clip), PNGs, summary.md.
    vitfast bench all --output "$work/all" || failures+=("bench all")
  fi
  if [[ $part == peers || $part == all ]]; then
    vitfast bench window -b 64 --stages stage1,stage2,stage3,stage4 --dtype bf16 \
      --backends triton,sdpa,flex,timm,eager --warmup 5 --rep 30 --json "$work/window_peers_bf16.json" \
      || failures+=("the window peers")
    vitfast bench attention -b 64 --heads 12 --head-dim 64 --dtype bf16 --seq-lens 197,257,577,1025 \
      --backends triton,sdpa,flex --warmup 5 --rep 30 --json "$work/attention_peers_bf16.json" \
      || failures+=("the attention peers")
    vitfast bench attention --module -b 64 --heads 12 --head-dim 64 --dtype bf16 --seq-lens 197,257,577,1025 \
      --backends triton,sdpa,flex,timm,eager --warmup 5 --rep 30 --json "$work/attention_module_peers_bf16.json" \
      || failures+=("the attention-module peers")
  fi
  if [[ $part == suites || $part == all ]]; then
    if [[ ${#pytest_opts[@]} -eq 0 ]]; then
      python3 -m pytest benchmarks -q --benchmark-enable --benchmark-json "$work/pytest_benchmark.json" \
        || failures+=("the pytest-benchmark suites")
    else
      echo "pytest-benchmark is not installed: the suites in benchmarks/ were not run"
    fi
  fi
  if [[ $part == maxbatch || $part == all ]]; then
    # The CLIP loss alone, fwd+bwd, at up to a batch of 2^20 on one GPU; eager and open_clip (when installed)
    # hold the N×N logits. chunked is left out: O(N·D) memory like triton's, so it would only reach the cap too.
    clip_backends=triton,eager
    python3 -c "import open_clip" 2>/dev/null && clip_backends+=,open_clip
    vitfast bench clip-loss --dim 512 --dtype bf16 --batch-sizes 4096 --mode fwd+bwd --backends "$clip_backends" \
      --warmup 3 --rep 10 --max-batch --max-batch-cap 1048576 --json "$work/clip_loss_max_batch_bf16.json" \
      || failures+=("the max-batch search")
  fi
  if [[ $part == siglip || $part == all ]]; then
    # The SigLIP loss, `bench clip-loss`'s twin: the sweep at the CLIP loss's shapes, then fwd+bwd up to a batch
    # of 2^20 as maxbatch searches (open_clip's SigLipLoss, when installed, holds the N×N logits like eager).
    # The issue's goal is read at N=65,536, D=768 (SigLIP ViT-B/16), fwd+bwd, beside open_clip's SigLipLoss.
    clip_backends=triton,chunked,eager  # the peers are open_clip's losses: the same names as for the CLIP loss
    python3 -c "import open_clip" 2>/dev/null && clip_backends+=,open_clip
    vitfast bench siglip-loss --dim 768 --dtype bf16 --batch-sizes 8192,16384,32768,65536 \
      --backends "$clip_backends" --warmup 2 --rep 10 --json "$work/siglip_loss_bf16_d768.json" \
      || failures+=("the siglip-loss sweep")
    clip_backends=triton,eager
    python3 -c "import open_clip" 2>/dev/null && clip_backends+=,open_clip
    vitfast bench siglip-loss --dim 512 --dtype bf16 --batch-sizes 4096 --mode fwd+bwd --backends "$clip_backends" \
      --warmup 3 --rep 10 --max-batch --max-batch-cap 1048576 --json "$work/siglip_loss_max_batch_bf16.json" \
      || failures+=("the siglip-loss max-batch search")
  fi
  if [[ $part == tune ]]; then
    # Each (kernel, family, dtype, head dim, N, B·H) is timed over the family's candidate tiles once, then
    # runs its winner; the sweep's own times are of the winners.
    for dt in bf16 fp16; do
      VITFAST_AUTOTUNE="$out/tuned_tiles.json" vitfast bench attention -b 64 --heads 12 --head-dim 64 --dtype $dt \
        --seq-lens 197,257,577,1025 --backends triton --modes fwd+bwd --warmup 3 --rep 10 \
        --json "$work/tune_attention_d64_$dt.json" || failures+=("tuning attention $dt")
    done
  fi
  if ((${#failures[@]})); then
    printf 'FAILED: %s\n' "${failures[@]}"
    return 1
  fi
  echo "run_gpu.sh $part: done"
}

main 2>&1 | tee -a "$out/run_gpu.log"
exit "${PIPESTATUS[0]}"
