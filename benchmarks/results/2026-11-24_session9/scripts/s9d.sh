#!/usr/bin/env bash
# session 9 call D: A/B of session 8's head (26a5337) against this session's code, Qwen3 12 GiB natural, same machine,
# same file, ABAB, no kept figures
BUDGET=12 SETUP_S=300 source benchmarks/gpu_machine/box_env.sh  # (the setup lines this call ran)
NEW=$PWD; OLD=$PWD/scratch/base_full
(cd $OLD && ln -sfn ../converters edge_moe/converters; ln -sfn ../tui edge_moe/tui; ln -sfn ../profiles edge_moe/profiles_data)
for who in new old new old; do
  [ $((SECONDS-T0)) -gt 500 ] && { echo "skip $who (time)"; continue; }
  [ $who = new ] && R=$NEW || R=$OLD
  (cd $R && PYTHONPATH=$WORK/shim:$R:$WORK/site timeout 150 python3 -m edge_moe.cli bench -m $WORK/qwen3.gguf --vram-budget 12 -t 16 -r 3 -p 512 -n 128 --max-seconds 35 --no-record-figures -o $OUT/ab_${who}_$((SECONDS-T0)).json > /tmp/ab.log 2>&1; echo "rc $?")
  echo "== $who at $((SECONDS-T0)) s"; grep -E "^(prefill|decode)|in situ|CPU" /tmp/ab.log | head -5
done
echo "total $((SECONDS-T0)) s"
