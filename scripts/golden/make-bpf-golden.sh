#!/usr/bin/env bash
# Regenerates the golden files of the disassembler tests in test/fixtures/bpf/ from the
# sources in test/fixtures/bpf/src/: each object's .text bytes, its symbols, and what
# llvm-objdump prints for it in four variants (hex and decimal immediates, with and without
# alu32, with and without raw bytes and zero-run elision). The tests read only these files, never llvm.
#
# Needs an LLVM whose BPF target knows ISA v4 (18 or later; Debian: apt-get install llvm-19)
# and clang with the BPF target (any version). Override with LLVM_SUFFIX=-20, CLANG=clang-19.
set -euo pipefail
cd "$(dirname "$0")/../.."

suffix="${LLVM_SUFFIX-}"
if [ -z "${LLVM_SUFFIX+x}" ]; then
  for v in 22 21 20 19 18; do
    if command -v "llvm-objdump-$v" >/dev/null; then suffix="-$v"; break; fi
  done
fi
MC="llvm-mc$suffix"; OBJDUMP="llvm-objdump$suffix"; OBJCOPY="llvm-objcopy$suffix"; NM="llvm-nm$suffix"
CLANG="${CLANG:-clang}"
for tool in "$MC" "$OBJDUMP" "$OBJCOPY" "$NM" "$CLANG" python3; do
  command -v "$tool" >/dev/null || { echo "make-bpf-golden: $tool not found" >&2; exit 1; }
done
major=$("$OBJDUMP" --version | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -1)
if [ "${major:-0}" -lt 18 ]; then
  echo "make-bpf-golden: $OBJDUMP is LLVM $major; ISA v4 needs 18 or later (apt-get install llvm-19)" >&2
  exit 1
fi

src=test/fixtures/bpf/src
out=test/fixtures/bpf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 scripts/golden/gen-fuzz-asm.py > "$src/fuzz.s"
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

# objdump's output without its first lines (they name the temporary file).
dump() {
  "$OBJDUMP" -d "$@" | sed '1,/^Disassembly of section \.text:$/d'
}

for f in "$src"/*.s "$src"/*.c; do
  name=$(basename "${f%.*}")
  obj="$tmp/$name.o"
  case "$f" in
    *.s) "$MC" -triple bpfel -mcpu=v4 -filetype=obj -o "$obj" "$f" ;;
    *.c) "$CLANG" -O2 -g -target bpf -mcpu=v3 -I"/usr/include/$multiarch" -c "$f" -o "$obj" ;;
  esac
  "$OBJCOPY" -O binary --only-section=.text "$obj" "$out/$name.bin"
  # Symbols in .text: "<slot> <name>", slot = byte offset / 8.
  "$NM" --defined-only --numeric-sort "$obj" |
    while read -r addr type sym; do
      case "$type" in t|T) printf '%d %s\n' "$((16#$addr / 8))" "$sym" ;; esac
    done > "$out/$name.syms"
  # -z: every slot gets a line, zero runs included; raw-v4 keeps objdump's default "..." for them.
  dump -z --mcpu=v4 --no-show-raw-insn "$obj" > "$out/$name.hex-v4.txt"
  dump -z --mcpu=v4 --no-show-raw-insn --no-print-imm-hex "$obj" > "$out/$name.dec-v4.txt"
  dump --mcpu=v4 "$obj" > "$out/$name.raw-v4.txt"
  dump -z --no-show-raw-insn "$obj" > "$out/$name.hex-v1.txt"
done
"$OBJDUMP" --version | sed -n 's/^ *\(.*LLVM version.*\)/\1/p' | head -1 > "$out/LLVM-VERSION"
echo "make-bpf-golden: wrote $(ls "$out"/*.bin | wc -l) objects with $OBJDUMP ($(cat "$out/LLVM-VERSION"))"
