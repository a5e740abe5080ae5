/**
 * A disassembler that prints what `llvm-objdump -d` (LLVM 19, the reference; LLVM 14 agrees
 * on the instructions it knows when immediates are decimal) prints for the BPF target, so a
 * program we generate can be compared line for line with one clang compiled.
 *
 * The reference's quirks are reproduced on purpose, because a listing that differs from
 * objdump only in spelling is useless for diffing:
 *  - fields an instruction does not use are ignored (a `goto` with a non-zero imm still
 *    prints as `goto`), fields it does use must hold a value LLVM accepts, otherwise the
 *    line is `<unknown>` (registers above r11, an ALU op with a non-zero offset, `exit`
 *    with a non-zero imm, be/le with a width other than 16/32/64 ...);
 *  - with `alu32` (what `--mcpu=v3`/`v4` selects) 8/16/32-bit loads, stores and 32-bit
 *    atomics name w registers; without it only the 32-bit atomic add exists;
 *  - `ld_pseudo` prints the pseudo source and the low 32 bits of the immediate, unsigned;
 *  - a 64-bit immediate load whose first slot is invalid is `<unknown>` for 8 bytes and the
 *    second slot is then disassembled as an instruction of its own (bytes input only).
 */
import * as O from './opcodes.js';
import { type Insn, INSN_SIZE, slots, slotCount } from './insn.js';
import { helperName } from './helpers.js';

export interface DisasmOptions {
  /**
   * Immediates and offsets in hex (`0x4c`, `-0x2`) as llvm-objdump 15 and later print them by
   * default; false prints decimal as `--no-print-imm-hex` and llvm-objdump 14 do. Default true.
   */
  hex?: boolean;
  /**
   * Name w registers in 8/16/32-bit loads, stores and 32-bit atomics, as llvm-objdump does with
   * `--mcpu=v3` or `--mcpu=v4`. Default false (plain `llvm-objdump -d`).
   */
  alu32?: boolean;
  /**
   * Names for instruction indices (as `Assembled.labels` holds them). Jump targets are annotated
   * the way objdump annotates them with symbols: ` <name>` or ` <name+0x10>` (bytes past it).
   */
  labels?: ReadonlyMap<string, number>;
  /** Names for slot numbers (an ELF symbol's value / 8), used like `labels`. */
  symbols?: ReadonlyMap<string, number>;
  /** Append the helper's name to helper calls: `call 0x5 <ktime_get_ns>` (objdump prints none). */
  helperNames?: boolean;
}

export interface ListingOptions extends DisasmOptions {
  /** Print the instruction bytes between slot number and text, as objdump does unless given
   *  `--no-show-raw-insn`. Default true. */
  rawBytes?: boolean;
  /** Before the instruction at a symbol or label, print a blank line and
   *  `0000000000000000 <name>:` as objdump does for symbols. Default false. */
  headers?: boolean;
  /**
   * Print a run of 8 or more zero bytes at an instruction boundary as one `\t\t...` line, as
   * objdump does unless given `-z`; it skips the run rounded down to a multiple of 4 bytes and
   * carries on from there, aligned or not. Bytes input only. Default true.
   */
  skipZeroes?: boolean;
}

/** One decoded unit: an instruction, or bytes the reference cannot decode. */
interface Unit {
  /** Byte offset in the program. */
  at: number;
  bytes: Uint8Array;
  insn?: Insn;
  /** A run of zero bytes objdump elides. */
  zeroes?: boolean;
}

const UNKNOWN = '<unknown>';

/** The text of one instruction, without annotation; `<unknown>` when LLVM would not decode it. */
export function formatInsn(insn: Insn, options: DisasmOptions = {}): string {
  return insnText(insn, options.hex ?? true, options.alu32 ?? false) ?? UNKNOWN;
}

/**
 * One line per instruction with the exact text `llvm-objdump -d --no-show-raw-insn` prints after
 * the slot number. Given bytes, the slots are walked as objdump walks them (see the module
 * comment); given instructions, each one is a line.
 */
export function disassemble(code: readonly Insn[] | Uint8Array, options: DisasmOptions = {}): string[] {
  const units = toUnits(code);
  const names = targetNames(code, units, options);
  return units.map((u) => lineText(u, names, options));
}

/**
 * The full lines objdump prints: `      12:\t61 61 4c 00 00 00 00 00\tr1 = *(u32 *)(r6 + 0x4c)`
 * (slot number right-aligned in 8 columns, a tab, the raw bytes, a tab, the text).
 */
export function formatListing(code: readonly Insn[] | Uint8Array, options: ListingOptions = {}): string[] {
  const units = toUnits(code, options.skipZeroes ?? true);
  const names = targetNames(code, units, options);
  const out: string[] = [];
  for (const u of units) {
    if (u.zeroes) {
      out.push('\t\t...');
      continue;
    }
    if (options.headers && u.at % INSN_SIZE === 0) {
      const here = names.bySlot.get(u.at / INSN_SIZE);
      if (here !== undefined) {
        out.push('');
        out.push(`${u.at.toString(16).padStart(16, '0')} <${here}>:`);
      }
    }
    const slot = String(Math.floor(u.at / INSN_SIZE)).padStart(8, ' ');
    const text = lineText(u, names, options);
    if (options.rawBytes ?? true) {
      out.push(`${slot}:\t${[...u.bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ')}\t${text}`);
    } else {
      out.push(`${slot}:\t${text}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

function lineText(u: Unit, names: TargetNames, options: DisasmOptions): string {
  const hex = options.hex ?? true;
  const text = u.insn ? insnText(u.insn, hex, options.alu32 ?? false) : null;
  if (text === null || !u.insn) return UNKNOWN;
  const insn = u.insn;
  const target = branchTarget(insn, u.at);
  if (target !== undefined && names.sorted.length > 0) {
    const note = annotate(target, names);
    if (note) return `${text} <${note}>`;
  }
  if (options.helperNames && insn.code === (O.BPF_JMP | O.BPF_CALL) && insn.src === 0) {
    const name = helperName(insn.imm);
    if (name) return `${text} <${name}>`;
  }
  return text;
}

/** Byte address a jump at byte `at` lands on, for the instructions objdump annotates (not
 *  calls). Bytes, not slots: after an elided zero run objdump may be walking unaligned. */
function branchTarget(insn: Insn, at: number): number | undefined {
  const c = O.cls(insn.code);
  if (c !== O.BPF_JMP && c !== O.BPF_JMP32) return undefined;
  const op = O.op(insn.code);
  if (op === O.BPF_CALL || op === O.BPF_EXIT) return undefined;
  const delta = c === O.BPF_JMP32 && op === O.BPF_JA ? insn.imm : insn.off;
  return at + INSN_SIZE + delta * INSN_SIZE;
}

interface TargetNames {
  bySlot: Map<number, string>;
  /** Slots that carry a name, ascending. */
  sorted: number[];
}

function targetNames(code: readonly Insn[] | Uint8Array, units: Unit[], options: DisasmOptions): TargetNames {
  const bySlot = new Map<number, string>();
  if (options.symbols) for (const [name, slot] of options.symbols) if (!bySlot.has(slot)) bySlot.set(slot, name);
  if (options.labels) {
    // Instruction index to slot, by the same walk that made the units; one past the end too.
    const slotOfIndex = units.map((u) => Math.floor(u.at / INSN_SIZE));
    slotOfIndex.push(code instanceof Uint8Array ? Math.ceil(code.length / INSN_SIZE) : slotCount(code));
    for (const [name, index] of options.labels) {
      const slot = slotOfIndex[index];
      if (slot !== undefined && !bySlot.has(slot)) bySlot.set(slot, name);
    }
  }
  return { bySlot, sorted: [...bySlot.keys()].sort((a, b) => a - b) };
}

/** objdump names a target by the nearest symbol at or below it, comparing 64-bit unsigned
 *  byte addresses, so a jump below the first symbol wraps around to a huge offset. */
function annotate(targetByte: number, names: TargetNames): string | undefined {
  const mask = (1n << 64n) - 1n;
  const target = BigInt(targetByte) & mask;
  let best: number | undefined;
  let bestAddr = -1n;
  for (const s of names.sorted) {
    const addr = (BigInt(s) * BigInt(INSN_SIZE)) & mask;
    if (addr <= target && addr > bestAddr) {
      best = s;
      bestAddr = addr;
    }
  }
  if (best === undefined) return undefined;
  const name = names.bySlot.get(best)!;
  const delta = target - bestAddr;
  return delta === 0n ? name : `${name}+0x${delta.toString(16)}`;
}

function toUnits(code: readonly Insn[] | Uint8Array, skipZeroes = false): Unit[] {
  if (!(code instanceof Uint8Array)) {
    const units: Unit[] = [];
    let at = 0;
    for (const insn of code) {
      units.push({ at, bytes: insnBytes(insn), insn });
      at += slots(insn) * INSN_SIZE;
    }
    return units;
  }
  const view = new DataView(code.buffer, code.byteOffset, code.byteLength);
  const units: Unit[] = [];
  let p = 0;
  while (p < code.length) {
    if (skipZeroes) {
      let n = 0;
      while (p + n < code.length && code[p + n] === 0) n++;
      if (n >= 8) {
        const skip = n & ~3;
        units.push({ at: p, bytes: code.subarray(p, p + skip), zeroes: true });
        p += skip;
        continue;
      }
    }
    if (code.length - p < INSN_SIZE) {
      // The reference reports a short tail one byte at a time.
      units.push({ at: p, bytes: code.subarray(p, p + 1) });
      p += 1;
      continue;
    }
    const regs = view.getUint8(p + 1);
    const insn: Insn = { code: view.getUint8(p), dst: regs & 0xf, src: regs >> 4, off: view.getInt16(p + 2, true), imm: view.getInt32(p + 4, true) };
    if (insn.code === O.LD_IMM64 && insnText({ ...insn, imm2: 0 }, false, false) !== null) {
      if (code.length - p < 2 * INSN_SIZE) {
        units.push({ at: p, bytes: code.subarray(p, p + 1) });
        p += 1;
        continue;
      }
      insn.imm2 = view.getInt32(p + INSN_SIZE + 4, true);
      units.push({ at: p, bytes: code.subarray(p, p + 2 * INSN_SIZE), insn });
      p += 2 * INSN_SIZE;
      continue;
    }
    // An invalid LD_IMM64 first slot stands alone; its decoded form must not claim a second slot.
    units.push({ at: p, bytes: code.subarray(p, p + INSN_SIZE), insn: insn.code === O.LD_IMM64 ? undefined : insn });
    p += INSN_SIZE;
  }
  return units;
}

function insnBytes(insn: Insn): Uint8Array {
  const out = new Uint8Array(slots(insn) * INSN_SIZE);
  const view = new DataView(out.buffer);
  view.setUint8(0, insn.code & 0xff);
  view.setUint8(1, ((insn.src & 0xf) << 4) | (insn.dst & 0xf));
  view.setInt16(2, insn.off, true);
  view.setInt32(4, insn.imm | 0, true);
  if (out.length > INSN_SIZE) view.setInt32(12, (insn.imm2 ?? 0) | 0, true);
  return out;
}

// --- instruction text ---------------------------------------------------------------------

const ALU_OPS: ReadonlyMap<number, string> = new Map([
  [O.BPF_ADD, '+='], [O.BPF_SUB, '-='], [O.BPF_MUL, '*='], [O.BPF_DIV, '/='], [O.BPF_OR, '|='],
  [O.BPF_AND, '&='], [O.BPF_LSH, '<<='], [O.BPF_RSH, '>>='], [O.BPF_MOD, '%='], [O.BPF_XOR, '^='],
  [O.BPF_ARSH, 's>>='],
]);

const JMP_OPS: ReadonlyMap<number, string> = new Map([
  [O.BPF_JEQ, '=='], [O.BPF_JGT, '>'], [O.BPF_JGE, '>='], [O.BPF_JSET, '&'], [O.BPF_JNE, '!='],
  [O.BPF_JSGT, 's>'], [O.BPF_JSGE, 's>='], [O.BPF_JLT, '<'], [O.BPF_JLE, '<='], [O.BPF_JSLT, 's<'],
  [O.BPF_JSLE, 's<='],
]);

const ATOMIC_OPS: ReadonlyMap<number, { sign: string; name: string }> = new Map([
  [O.BPF_ADD, { sign: '+', name: 'add' }], [O.BPF_OR, { sign: '|', name: 'or' }],
  [O.BPF_AND, { sign: '&', name: 'and' }], [O.BPF_XOR, { sign: '^', name: 'xor' }],
]);

/** Width name of a load/store size field. */
const WIDTH: Record<number, string> = { [O.BPF_B]: '8', [O.BPF_H]: '16', [O.BPF_W]: '32', [O.BPF_DW]: '64' };

function insnText(i: Insn, hex: boolean, alu32: boolean): string | null {
  const num = (v: number | bigint): string => {
    if (!hex) return String(v);
    return v < 0 ? `-0x${(-BigInt(v)).toString(16)}` : `0x${v.toString(16)}`;
  };
  // LLVM knows r0..r11 (r11 is its internal stack register); anything above fails to decode.
  const reg = (n: number, w = false): string | null => (n >= 0 && n <= 11 ? `${w ? 'w' : 'r'}${n}` : null);
  const mem = (base: number, off: number): string | null => {
    const b = reg(base);
    if (b === null) return null;
    return off >= 0 ? `${b} + ${num(off)}` : `${b} - ${num(-off)}`;
  };
  const branch = (off: number): string => (off >= 0 ? `+${num(off)}` : num(off));

  const code = i.code;
  const c = O.cls(code);
  const x = O.src(code) === O.BPF_X;
  switch (c) {
    case O.BPF_ALU:
    case O.BPF_ALU64: {
      const w = c === O.BPF_ALU;
      const op = O.op(code);
      const d = reg(i.dst, w);
      if (d === null) return null;
      if (op === O.BPF_NEG) return x ? null : `${d} = -${d}`;
      if (op === O.BPF_END) {
        if (i.imm !== 16 && i.imm !== 32 && i.imm !== 64) return null;
        const r = reg(i.dst)!;
        if (!w) return x ? null : `${r} = bswap${i.imm} ${r}`;
        return `${r} = ${x ? 'be' : 'le'}${i.imm} ${r}`;
      }
      if (op === O.BPF_MOV) {
        if (!x) return i.off === 0 ? `${d} = ${num(i.imm)}` : null;
        const s = reg(i.src, w);
        if (s === null) return null;
        if (i.off === 0) return `${d} = ${s}`;
        if (i.off === 8 || i.off === 16 || (i.off === 32 && !w)) return `${d} = (s${i.off})${s}`;
        return null;
      }
      let sign = ALU_OPS.get(op);
      if (sign === undefined) return null;
      if (i.off === 1 && (op === O.BPF_DIV || op === O.BPF_MOD)) sign = `s${sign}`;
      else if (i.off !== 0) return null;
      if (!x) return `${d} ${sign} ${num(i.imm)}`;
      const s = reg(i.src, w);
      return s === null ? null : `${d} ${sign} ${s}`;
    }
    case O.BPF_JMP:
    case O.BPF_JMP32: {
      const w = c === O.BPF_JMP32;
      const op = O.op(code);
      if (op === O.BPF_JA) {
        if (x) return null;
        return w ? `gotol ${branch(i.imm)}` : `goto ${branch(i.off)}`;
      }
      if (op === O.BPF_CALL || op === O.BPF_EXIT || op === 0xe0) {
        if (w) return null;
        if (op === O.BPF_CALL) {
          if (!x) return `call ${num(i.imm)}`;
          const r = reg(i.dst);
          return r === null ? null : `callx ${r}`;
        }
        if (x) return null;
        if (op === O.BPF_EXIT) return i.imm === 0 ? 'exit' : null;
        return `may_goto ${branch(i.off)}`;
      }
      const sign = JMP_OPS.get(op);
      if (sign === undefined) return null;
      const d = reg(i.dst, w);
      if (d === null) return null;
      const rhs = x ? reg(i.src, w) : num(i.imm);
      if (rhs === null) return null;
      return `if ${d} ${sign} ${rhs} goto ${branch(i.off)}`;
    }
    case O.BPF_LD: {
      const md = O.mode(code);
      const sz = O.size(code);
      if (code === O.LD_IMM64) {
        const d = reg(i.dst);
        if (d === null || i.off !== 0) return null;
        if (i.src === 0) return `${d} = ${num(BigInt.asIntN(64, (BigInt(i.imm2 ?? 0) << 32n) | BigInt(i.imm >>> 0)))} ll`;
        return `ld_pseudo\t${d}, ${num(i.src)}, ${num(i.imm >>> 0)}`;
      }
      if (sz === O.BPF_DW) return null;
      if (md === O.BPF_ABS) return `r0 = *(u${WIDTH[sz]} *)skb[${num(i.imm)}]`;
      if (md === O.BPF_IND) {
        const s = reg(i.src);
        return s === null ? null : `r0 = *(u${WIDTH[sz]} *)skb[${s}]`;
      }
      return null;
    }
    case O.BPF_LDX: {
      const md = O.mode(code);
      const sz = O.size(code);
      const m = mem(i.src, i.off);
      if (m === null) return null;
      if (md === O.BPF_MEM) {
        const d = reg(i.dst, alu32 && sz !== O.BPF_DW);
        return d === null ? null : `${d} = *(u${WIDTH[sz]} *)(${m})`;
      }
      if (md === O.BPF_MEMSX && sz !== O.BPF_DW) {
        const d = reg(i.dst);
        return d === null ? null : `${d} = *(s${WIDTH[sz]} *)(${m})`;
      }
      return null;
    }
    case O.BPF_ST: {
      if (O.mode(code) !== O.BPF_MEM) return null;
      const m = mem(i.dst, i.off);
      return m === null ? null : `*(u${WIDTH[O.size(code)]} *)(${m}) = ${num(i.imm)}`;
    }
    case O.BPF_STX: {
      const md = O.mode(code);
      const sz = O.size(code);
      const m = mem(i.dst, i.off);
      if (m === null) return null;
      if (md === O.BPF_MEM) {
        const s = reg(i.src, alu32 && sz !== O.BPF_DW);
        return s === null ? null : `*(u${WIDTH[sz]} *)(${m}) = ${s}`;
      }
      if (md !== O.BPF_ATOMIC || (sz !== O.BPF_W && sz !== O.BPF_DW)) return null;
      return atomicText(i, sz === O.BPF_W, m, alu32, reg);
    }
    default:
      return null;
  }
}

function atomicText(i: Insn, narrow: boolean, m: string, alu32: boolean, reg: (n: number, w?: boolean) => string | null): string | null {
  // Only bits 7..0 of imm select the operation; LLVM ignores the rest.
  const aop = i.imm & 0xf0;
  const fetch = (i.imm & 0x0f) === O.BPF_FETCH;
  const width = narrow ? 'u32' : 'u64';
  if (narrow && !alu32) {
    // Without alu32 LLVM knows a single 32-bit atomic, the add, and does not look at the fetch bit.
    if (aop !== O.BPF_ADD) return null;
    const s = reg(i.src);
    return s === null ? null : `lock *(u32 *)(${m}) += ${s}`;
  }
  const s = reg(i.src, narrow);
  if (s === null) return null;
  const alu = ATOMIC_OPS.get(aop);
  if (alu) {
    if (!fetch) return `lock *(${width} *)(${m}) ${alu.sign}= ${s}`;
    return `${s} = atomic_fetch_${alu.name}((${width} *)(${m}), ${s})`;
  }
  if (!fetch) return null;
  if (aop === (O.BPF_XCHG & 0xf0)) return narrow ? `${s} = xchg32_32(${m}, ${s})` : `${s} = xchg_64(${m}, ${s})`;
  if (aop === (O.BPF_CMPXCHG & 0xf0)) return narrow ? `w0 = cmpxchg32_32(${m}, w0, ${s})` : `r0 = cmpxchg_64(${m}, r0, ${s})`;
  return null;
}
