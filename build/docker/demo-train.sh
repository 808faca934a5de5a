#!/bin/sh
# One-shot demo training job (the `train` service of build/compose.yaml): generate demo
# deliveries, train a model and promote it to production in $MODEL_ARTIFACT_PATH (the
# registry volume the server reads). Idempotent: when the registry already serves a
# production model it says so and exits 0, so `docker compose up` again neither
# retrains nor piles up versions. Extra arguments go to `intellilog train`
# (e.g. --max-rounds 60). $DEMO_ROWS rows (default 200000, as `make demo`), seed
# $DEMO_SEED (default 7); the data file is written to $DEMO_DATA (default
# /tmp/deliveries.parquet: it is not kept).
set -eu

rows=${DEMO_ROWS:-200000}
seed=${DEMO_SEED:-7}
data=${DEMO_DATA:-/tmp/deliveries.parquet}
registry=${MODEL_ARTIFACT_PATH:-./models}

if intellilog models show production >/dev/null 2>&1; then
    echo "registry $registry already serves a production model: nothing to train"
    exit 0
fi
intellilog generate --rows "$rows" --seed "$seed" --out "$data"
intellilog train --data "$data" --promote "$@"
