#!/bin/sh
# `make run`: start the daemon on the default model (or, without a daemon, generate with the
# CLI). MODEL=path overrides the default, which is stories260K from the shared folder.
build=${1:-build}
shared=${2:-../shared}
model=${MODEL:-$shared/models/tinyllamas-stories-260k-f32.v3.gguf}
if [ ! -f "$model" ]; then
    echo "make run: no model at $model" >&2
    echo "  pass one with: make run MODEL=/path/to/model.gguf" >&2
    exit 1
fi
if [ -x "$build/deltallmd" ]; then
    echo "starting deltallmd on $model (Ctrl-C to stop)"
    exec "$build/deltallmd" --model "$model" ${DELTALLMD_ARGS:-}
fi
exec "$build/deltallm" generate -m "$model" -p "Once upon a time" -n 128
