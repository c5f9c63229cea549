#!/usr/bin/env bash
# GPU check: on a CUDA machine, in under 5 minutes, run the `gpu`-marked tests and a short
# search + mixed-precision fine-tune + export of the demo (compress run --device cuda), and write
# benchmarks/results/gpu_check.json (what ran, exit codes, seconds, the run's report summary).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Exit code: 0 when the tests and the run passed, 1 otherwise; 2 when no CUDA device is visible.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT_JSON="benchmarks/results/gpu_check.json"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible; nothing run" >&2
  exit 2
fi

t0=$(date +%s)
timeout 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$WORK/gpu_tests.xml" tests \
  >"$WORK/tests.log" 2>&1
tests_rc=$?
t1=$(date +%s)
# short search (EagleEye, 8 candidates), 1 epoch of mixed-precision fine-tuning on CUDA, ONNX export + validation
timeout 240 "$PY" -m compressor.cli.main run examples/resnet_mnist.pt --target mobile --flops 0.5 \
  --method eagleeye --candidates 8 --epochs 1 --device cuda --out "$WORK/run" --json \
  >"$WORK/run.json" 2>"$WORK/run.log"
run_rc=$?
t2=$(date +%s)

"$PY" - "$WORK" "$OUT_JSON" "$tests_rc" "$run_rc" "$((t1 - t0))" "$((t2 - t1))" <<'PYEOF'
import json, subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, out, tests_rc, run_rc, tests_s, run_s = sys.argv[1:]
work = Path(work)
import torch

junit = {}
try:
    suite = ET.parse(work / "gpu_tests.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    junit = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError):
    pass
report = {}
rep_path = work / "run" / "report.json"
if rep_path.is_file():
    r = json.loads(rep_path.read_text())
    report = {
        "status": r.get("status"),
        "exit_code": r.get("exit_code"),
        "original_top1": (r.get("original") or {}).get("top1"),
        "compressed_top1": (r.get("compressed") or {}).get("top1"),
        "compressed_top1_ort": (r.get("compressed") or {}).get("top1_ort"),
        "flops_ratio": (r.get("compressed") or {}).get("flops_ratio"),
        "stages": [{"name": s.get("name"), "status": s.get("status"), "seconds": s.get("seconds")} for s in r.get("stages", [])],
        "checks": r.get("checks"),
    }
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
doc = {
    "benchmark": "gpu_check",
    "command": "bash benchmarks/gpu_check.sh",
    "code": {"git_commit": commit},
    "machine": {
        "gpu": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "bf16": torch.cuda.is_bf16_supported(),
    },
    "gpu_tests": {"exit_code": int(tests_rc), "seconds": int(tests_s), **junit,
                  "log_tail": (work / "tests.log").read_text(errors="replace")[-2000:]},
    "run": {"exit_code": int(run_rc), "seconds": int(run_s), "report": report,
            "log_tail": (work / "run.log").read_text(errors="replace")[-2000:]},
    "passed": int(tests_rc) == 0 and int(run_rc) == 0,
}
Path(out).parent.mkdir(parents=True, exist_ok=True)
Path(out).write_text(json.dumps(doc, indent=1))
print(json.dumps({k: doc[k] for k in ("passed", "machine")}, indent=1))
PYEOF
[ "$tests_rc" -eq 0 ] && [ "$run_rc" -eq 0 ]
