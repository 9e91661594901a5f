#!/usr/bin/env bash
# The engine benchmarks on a lent GPU machine, as one prepared run (docs/benchmarks.md, "On a lent GPU").
# That machine's image has torch, transformers 5.17, peft and accelerate, not pydantic (which tasks/
# needs), and nothing can be fetched there, so wheels travel with the working tree:
#   here:   bash bench/gpu.sh wheels   downloads them for its Python 3.12 into .whl/ (git ignores it;
#           run it with this repo's environment active, whose transformers version it takes)
#   there:  bash bench/gpu.sh          installs them, runs the benchmarks, logs to $OUT/gpu.log
# A session has 15 minutes of device time: run it with `timeout_s` 600; the benchmark
# stops itself at 500 s, having printed each warm-up's time (the compiles) as it went.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == wheels ]]; then
  rm -rf .whl
  # transformers as in requirements here (its continuous-batching settings), pydantic with its own needs
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    pydantic "transformers==$(python -c 'import transformers; print(transformers.__version__)')" --no-deps
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "$(unzip -p .whl/pydantic-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: \(pydantic-core==[0-9.]*\).*/\1/p')" \
    annotated-types typing-inspection typing-extensions --no-deps
  du -sh .whl && ls .whl
  exit
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu.log
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  # (a), (d), (s) and each figure's share of the memory-bandwidth bound: the 1.5B configuration, 64 in flight
  timeout 500 python3 bench/engines.py --architecture qwen2.5-1.5b --questions 64 --max-new-tokens 192 \
    --no-server --no-pipeline --in-flight 64 --repeats 2 --compile || echo "bench/engines.py: exit $?"
} 2>&1 | tee "$log"
