#!/usr/bin/env bash
# docs/extending.md's worked example, end to end: personas with a private religion, a public home region and a
# fixed number of years in their section, imported, adapted from Japan to Germany, simulated, judged, exported
# as training data and shown on the site.
#
#   bash docs/examples/attributes.sh                 # the embedded SmolLM2 (a few minutes on a CPU)
#   bash docs/examples/attributes.sh puppet          # canned answers: the plumbing in seconds
#   bash docs/examples/attributes.sh MODEL_SPEC OUT  # any model spec, another output folder
set -euo pipefail
MODEL=${1:-smollm2}
OUT=${2:-runs/attributes-example}
PY=${PYTHON:-python}
DB=$OUT/study.db
mkdir -p "$OUT"

$PY -m graphs.scenarios import docs/examples/jpn_scenarios.jsonl --db "$DB"
$PY -m graphs.adapt --culture DEU --seeds docs/examples/jpn_scenarios.jsonl --model "$MODEL" --db "$DB" --no-progress
$PY -m graphs.scenarios list --db "$DB"
$PY -m graphs.simulate --culture DEU --episodes 1 --max-turns 3 --model "$MODEL" --db "$DB" --no-progress
$PY -m graphs.judge --culture DEU --model "$MODEL" --db "$DB" --no-progress
$PY -m training.dataset --culture DEU --out "$OUT/data" --db "$DB"
$PY -m graphs.view --db "$DB" --out "$OUT/site"
