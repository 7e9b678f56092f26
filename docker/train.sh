#!/bin/sh
# The compose `train` service (installed in the image as `rnnlm-train-texts`):
# every *.txt file in $TEXTS -> `rnnlm corpus` -> `rnnlm train` -> a checkpoint published
# as $RNNLM_MODELS_DIR/$MODEL_NAME, which a running API picks up (RNNLM_WATCH_INTERVAL_S).
#
#   MODEL_NAME   the served model's name (default: mine)
#   CORPUS_ARGS  flags of `rnnlm corpus` (default: --tokenizer char)
#   TRAIN_ARGS   flags of `rnnlm train` (default: --time-budget 600)
#
# The run itself (metrics.jsonl, curve.png, summary.json) stays in
# $RNNLM_MODELS_DIR/.runs/$MODEL_NAME, which the API ignores.
set -eu

models="${RNNLM_MODELS_DIR:?set RNNLM_MODELS_DIR to the models directory}"
texts="${TEXTS:-/texts}"
name="${MODEL_NAME:-mine}"
case "$name" in
    "" | .* | */*) echo "train: MODEL_NAME must be a plain directory name, got '$name'" >&2; exit 2 ;;
esac
set -- "$texts"/*.txt
if [ ! -f "$1" ]; then
    echo "train: no *.txt file in $texts: mount a folder of UTF-8 text there" >&2
    exit 2
fi

work="$models/.runs/$name"
rm -rf "$work"
# The *_ARGS are lists of flags: split on spaces on purpose.
# shellcheck disable=SC2086
rnnlm corpus "$@" --out "$work/corpus" ${CORPUS_ARGS:---tokenizer char}
# shellcheck disable=SC2086
rnnlm train --corpus "$work/corpus" --out "$work/run" --no-progress ${TRAIN_ARGS:---time-budget 600}

# Publish by renames, as the checkpoint format does: a crash leaves `.NAME.old`, which
# loading recovers, never half a checkpoint under NAME.
new="$models/.$name.tmp-train" old="$models/.$name.old"
rm -rf "$new" "$old"
cp -R "$work/run/best" "$new"
if [ -e "$models/$name" ]; then mv "$models/$name" "$old"; fi
mv "$new" "$models/$name"
rm -rf "$old"
echo "train: model ready in $models/$name (a running api picks it up within RNNLM_WATCH_INTERVAL_S)" >&2
