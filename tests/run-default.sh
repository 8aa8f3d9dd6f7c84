#!/bin/sh
# `make run`: start the daemon on the default model (or, without a daemon, generate with the
# CLI). MODEL=path overrides the default, stories260K, which `deltallm pull` finds in the
# local model folders ($shared/models first) with its sha256 checked, or downloads.
build=${1:-build}
shared=${2:-../shared}
if [ -n "${MODEL:-}" ]; then
    model=$MODEL
    if [ ! -f "$model" ]; then
        echo "make run: no model at $model" >&2
        exit 1
    fi
else
    # ../shared/models is searched anyway; name another shared folder so it is searched first
    dirarg=""
    [ "$shared" != "../shared" ] && dirarg="--models-dir $shared/models"
    if ! model=$("$build/deltallm" pull --path-only $dirarg stories260k); then
        echo "make run: the default model stories260k could not be found or downloaded (see above)" >&2
        echo "  pass one with: make run MODEL=/path/to/model.gguf" >&2
        exit 1
    fi
fi
if [ -x "$build/deltallmd" ]; then
    # the default model runs with config/deltallmd.conf, which carries its DeltaLLM layer
    # profile; a model of your own runs with the built-in defaults
    cfg=""
    [ -z "${MODEL:-}" ] && [ -f config/deltallmd.conf ] && cfg="--config config/deltallmd.conf"
    echo "starting deltallmd on $model${cfg:+ with config/deltallmd.conf} (Ctrl-C to stop)"
    exec "$build/deltallmd" $cfg --model "$model" ${DELTALLMD_ARGS:-}
fi
exec "$build/deltallm" generate -m "$model" -p "Once upon a time" -n 128
