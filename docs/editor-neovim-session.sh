#!/bin/bash
set -e
# Replays the session of docs/editor-neovim.txt: Neovim with graphres lsp in a detached tmux session,
# keys sent with `tmux send-keys`, screens captured with `tmux capture-pane` into $OUT.
W="${W:-$(cd "$(dirname "$0")/.." && pwd)}"
PY="${GRAPHRES_PYTHON:-python}"
DEMO="${DEMO:-/tmp/nvdemo}"
OUT="${OUT:-$DEMO/out.txt}"
mkdir -p "$DEMO"
tmux kill-session -t gr 2>/dev/null || true
cd "$DEMO"
sed 's/planes: 128/plnes: 128/' $W/specs/resnet18.yaml > r18.yaml
tmux new-session -d -s gr -x 120 -y 34 "env PYTHONPATH=$W GRAPHRES_PYTHON=$PY nvim -u $W/docs/editor-neovim.lua r18.yaml"
N=0
cap() {  # the screen as text into $OUT, and with its colours (ANSI) into $OUT.N.ansi
  sleep ${2:-3}; N=$((N + 1))
  { echo "=== $1"; tmux capture-pane -p -t gr; echo; } >> "$OUT"
  tmux capture-pane -p -e -t gr > "$OUT.$N.ansi"
}
: > "$OUT"
sleep 6
tmux send-keys -t gr ':9' Enter
cap "1. opened r18.yaml with a typo (plnes) on line 9: the diagnostics of graphres validate, and the stage table as code lenses" 4
tmux send-keys -t gr ':lua vim.diagnostic.open_float()' Enter
cap "1b. both diagnostics of line 9 (vim.diagnostic.open_float())" 2
tmux send-keys -t gr 'j' 'k' ':9' Enter '0fb' 'K'
cap "2. K (hover) on layer2's entry, line 9" 3
tmux send-keys -t gr 'j' 'k' ':9' Enter ':s/plnes/planes/' Enter ':w' Enter
sleep 3
cap "3. fixed and saved: the diagnostics are gone, the code lenses show every stage" 4
tmux send-keys -t gr ':9' Enter '0fb' 'K'
cap "4. K on layer2 again: output shape, stride, dilation, receptive field, parameters, MACs at 3x224x224" 3
tmux send-keys -t gr 'j' 'k' ':set paste' Enter ':11' Enter 'o' '  - {block: b' C-x C-o
cap "5. completion of a block type (<C-x><C-o> after '- {block: b')" 3
tmux send-keys -t gr C-e Escape 'u' ':set nopaste' Enter ':9' Enter '0fbww' 'gd'
cap "6. gd (go to definition) on 'basic': the built-in graphres/blocks/resnet.yaml" 3
tmux send-keys -t gr ':qa!' Enter
sleep 1
tmux kill-session -t gr 2>/dev/null || true
