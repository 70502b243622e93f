#!/usr/bin/env bash
# make test-perturbed: the numeric tests under perturbations that change how results round (another thread
# split, another CPU kernel level, oneDNN off, denormals flushed), so a bound too tight for another CPU fails here
# first. PERTURB_TESTS narrows the files; PERTURBATIONS picks entries by name (default: all that apply).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TESTS=${PERTURB_TESTS:-"tests/oracles tests/test_tolerances.py tests/test_canvas.py tests/test_denoiser.py \
tests/test_gradients.py tests/test_gradop_graph.py tests/test_gradop_guidance.py tests/test_sdedit_guidance.py \
tests/test_panorama_conds.py tests/test_panorama_graph.py tests/test_panorama_guidance.py tests/test_regions_graph.py \
tests/test_regions_guidance.py tests/test_sdedit_graph.py tests/test_semantic_graph.py \
tests/test_semantic_guidance.py tests/test_every_option.py"}
capability=$($PY -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
# name | environment
ALL=(
  "threads1|OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GS_PERTURB=threads1"
  "threads3|GS_PERTURB=threads3"
  "isa-default|ATEN_CPU_CAPABILITY=default"
  "isa-avx2|ATEN_CPU_CAPABILITY=avx2"
  "nomkldnn|GS_PERTURB=nomkldnn"
  "flushdenormal|GS_PERTURB=flushdenormal"
)
failed=()
for entry in "${ALL[@]}"; do
  name=${entry%%|*}; environment=${entry#*|}
  if [ -n "${PERTURBATIONS:-}" ] && [[ " $PERTURBATIONS " != *" $name "* ]]; then continue; fi
  if [ "$name" = isa-avx2 ] && [[ "$capability" != AVX512* ]]; then
    echo "== $name: skipped (this CPU's kernels are $capability already)"; continue
  fi
  echo "== $name: $environment"
  # shellcheck disable=SC2086
  if ! env $environment $PY -m pytest -q -p no:cacheprovider -m "not server" $TESTS; then failed+=("$name"); fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "test-perturbed: failed under: ${failed[*]}"; exit 1; fi
echo "test-perturbed: passed under every perturbation"
