#!/usr/bin/env bash
# Writes test/fixtures/bpf/helper-ids.txt ("<id> <name>" per line) from the running kernel's
# BTF (enum bpf_func_id), the reference for src/bpf/helpers.ts's names and ids.
# Needs bpftool and /sys/kernel/btf/vmlinux.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=test/fixtures/bpf/helper-ids.txt
bpftool btf dump file /sys/kernel/btf/vmlinux format raw |
  awk '/ENUM .bpf_func_id./ { inside = 1; next }
       inside && /^\[/ { inside = 0 }
       inside && /BPF_FUNC_/ { gsub(/\047/, ""); sub(/^[ \t]*BPF_FUNC_/, ""); sub(/ val=/, " "); print $2, $1 }' > "$out"
echo "make-helper-ids: $(wc -l < "$out") helper ids from $(uname -r) into $out"
