#!/bin/sh
# `make bench`: the standard benchmark set. Generates the synthetic real-shape models it
# needs into $BUILD/models (ignored by git), then prints one block per model and a table.
#   BENCH_MODELS="llama3.2-1b:Q8_0 ..."  override the model list
#   BENCH_THREADS=2  BENCH_REPS=3  BENCH_DEPTHS=2048,4096
set -e
build=${1:-build}
shared=${DL_SHARED:-../shared}
cli="$build/deltallm"
models=${BENCH_MODELS:-"llama3.2-1b:Q8_0 llama3.2-1b:Q4_0 llama3.2-1b:Q4_K bitnet-2b4t:I2_S"}
threads=${BENCH_THREADS:-2}
reps=${BENCH_REPS:-3}
depths=${BENCH_DEPTHS:-2048,4096}
mkdir -p "$build/models"
out="$build/bench.jsonl"
: > "$out"
# one field of a flat JSON line (numbers and strings)
field() { echo "$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }
for spec in $models; do
    shape=${spec%%:*}
    type=${spec##*:}
    file="$build/models/$shape-$(echo "$type" | tr 'A-Z' 'a-z').gguf"
    if [ ! -f "$file" ]; then
        echo "== generating $file"
        "$cli" synth --shape "$shape" --type "$type" -o "$file" --shared "$shared"
    fi
    echo "== $shape $type, $threads threads (load $(cut -d' ' -f1 /proc/loadavg))"
    "$cli" bench -m "$file" -t "$threads" --reps "$reps" --depth "$depths" --batch-seqs 8 \
        --json | tee -a "$out"
done
echo
echo "| model | type | threads | prefill tok/s | decode tok/s | decode / roofline | deepest depth: decode tok/s | 8 sequences: aggregate tok/s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
while read -r line; do
    j=${line%%\"depths\"*}   # top-level fields only (depth rows repeat some names)
    deep=$(echo "$line" | sed -n 's/.*"depth":\([0-9]*\),"decode_tokens_per_second":\([0-9.]*\).*/\1: \2/p')
    rss=$(field "$j" peak_rss_bytes)
    printf '| %s | %s | %s | %.1f | %.2f | %.0f%% | %s | %.1f | %.0f |\n' "$(field "$j" model)" \
        "$(field "$j" type)" "$(field "$j" threads)" "$(field "$j" prefill_tokens_per_second)" \
        "$(field "$j" decode_tokens_per_second)" \
        "$(awk "BEGIN { print $(field "$j" decode_roofline_ratio) * 100 }")" "${deep:--}" \
        "$(field "$line" batched_decode_tokens_per_second)" "$(awk "BEGIN { print $rss / 1048576 }")"
done < "$out"
echo "(bandwidth probe: $(field "$(head -n1 "$out")" memory_bandwidth_bytes_per_second) B/s)"
q4="$build/models/llama3.2-1b-q4_0.gguf"
if [ -f "$q4" ] && [ -x "$build/deltallmd" ]; then
    echo "== daemon: 8 concurrent clients vs one (llama3.2-1b Q4_0, 64 tokens each)"
    sh tests/bench_daemon.sh "$build" "$q4" "$threads" 8 64
fi
if "$cli" bench-attn --help >/dev/null 2>&1; then
    echo "== DeltaLLM attention vs dense (llama3.2-1b attention shape)"
    "$cli" bench-attn --depth 512,2048,4096 -t "$threads"
fi
echo "machine-readable results: $out"
