#!/usr/bin/env bash
# Installs the library into a fresh prefix, builds examples/retrieve against it with
# find_package(AdaRetrieval) and runs it on a checkpoint trained by the installed `ada` tool.
# Usage: example_install.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1 build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/examples/retrieve" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/example" >/dev/null
"$work/prefix/bin/ada" train --out "$work/run" --epochs 1 --max-batches 2 --hidden 16 --heads 2 --inner 32 >/dev/null
out=$("$work/example/retrieve_example" "$work/run/model.safetensors" 10 2 5 6 7)
echo "$out"
lines=$(printf '%s\n' "$out" | wc -l)
[ "$lines" -eq 10 ] || { echo "expected 10 retrieved items, got $lines"; exit 1; }
# the history items 5, 6, 7 are never retrieved
if printf '%s\n' "$out" | awk '{print $2}' | grep -qxE '5|6|7'; then echo "a history item was retrieved"; exit 1; fi
echo "example OK"
