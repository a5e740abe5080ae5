/**
 * A builder for eBPF programs with named labels, resolved when the program is assembled.
 * Jumps and bpf-to-bpf calls name a label; 64-bit immediate loads may name a map, which
 * the loader (fd) or the ELF writer (relocation) fills in later.
 *
 *   const a = new Assembler();
 *   a.ldx(4, R2, R1, 0).ldx(4, R3, R1, 4).jmp('jgt', R2, R3, 'out') ... .label('out').mov64(R0, 2).exit();
 *   const { insns, mapRefs } = a.assemble();
 */
import * as O from './opcodes.js';
import type { Reg } from './opcodes.js';
import type { Insn } from './insn.js';

export type AluOp =
  | 'add' | 'sub' | 'mul' | 'div' | 'sdiv' | 'or' | 'and' | 'lsh' | 'rsh' | 'mod' | 'smod' | 'xor' | 'mov' | 'arsh';
export type JmpOp =
  | 'jeq' | 'jgt' | 'jge' | 'jset' | 'jne' | 'jsgt' | 'jsge' | 'jlt' | 'jle' | 'jslt' | 'jsle';
export type Size = 1 | 2 | 4 | 8;

const ALU: Record<AluOp, { op: number; off: number }> = {
  add: { op: O.BPF_ADD, off: 0 }, sub: { op: O.BPF_SUB, off: 0 }, mul: { op: O.BPF_MUL, off: 0 },
  div: { op: O.BPF_DIV, off: 0 }, sdiv: { op: O.BPF_DIV, off: 1 }, or: { op: O.BPF_OR, off: 0 },
  and: { op: O.BPF_AND, off: 0 }, lsh: { op: O.BPF_LSH, off: 0 }, rsh: { op: O.BPF_RSH, off: 0 },
  mod: { op: O.BPF_MOD, off: 0 }, smod: { op: O.BPF_MOD, off: 1 }, xor: { op: O.BPF_XOR, off: 0 },
  mov: { op: O.BPF_MOV, off: 0 }, arsh: { op: O.BPF_ARSH, off: 0 },
};

export const JMP: Record<JmpOp, number> = {
  jeq: O.BPF_JEQ, jgt: O.BPF_JGT, jge: O.BPF_JGE, jset: O.BPF_JSET, jne: O.BPF_JNE, jsgt: O.BPF_JSGT,
  jsge: O.BPF_JSGE, jlt: O.BPF_JLT, jle: O.BPF_JLE, jslt: O.BPF_JSLT, jsle: O.BPF_JSLE,
};

/** An operand is a register (a plain number 0..10) or an immediate wrapped by `imm()`, so the
 *  two can never be confused. */
export interface Imm { readonly imm: number }
export const imm = (value: number): Imm => ({ imm: value });
export type Operand = Reg | Imm;

const isImm = (v: Operand): v is Imm => typeof v === 'object';

/** A LD_IMM64 that refers to a map by name (fd or relocation filled in later). */
export interface MapRef {
  /** Index into `insns` of the LD_IMM64. */
  index: number;
  map: string;
  /** BPF_PSEUDO_MAP_FD, or BPF_PSEUDO_MAP_VALUE with `offset` into the value. */
  kind: 'fd' | 'value';
  offset: number;
}

export interface Assembled {
  insns: Insn[];
  mapRefs: MapRef[];
  /** Label name to instruction index (not slot), for disassembly and debugging. */
  labels: Map<string, number>;
}

export class AsmError extends Error {}

interface Pending {
  insn: Insn;
  jump?: string;
  call?: string;
  map?: { name: string; kind: 'fd' | 'value'; offset: number };
}

export class Assembler {
  private readonly items: Pending[] = [];
  private readonly labelAt = new Map<string, number>();

  /** Number of instructions so far. */
  get length(): number {
    return this.items.length;
  }

  label(name: string): this {
    if (this.labelAt.has(name)) throw new AsmError(`label "${name}" defined twice`);
    this.labelAt.set(name, this.items.length);
    return this;
  }

  hasLabel(name: string): boolean {
    return this.labelAt.has(name);
  }

  raw(insn: Insn): this {
    this.items.push({ insn: { ...insn } });
    return this;
  }

  private alu(cls: number, opName: AluOp, dst: Reg, v: Operand): this {
    const { op, off } = ALU[opName];
    if (isImm(v)) return this.raw({ code: cls | op | O.BPF_K, dst, src: 0, off, imm: v.imm });
    return this.raw({ code: cls | op | O.BPF_X, dst, src: v, off, imm: 0 });
  }

  alu64(op: AluOp, dst: Reg, v: Operand): this {
    return this.alu(O.BPF_ALU64, op, dst, v);
  }

  alu32(op: AluOp, dst: Reg, v: Operand): this {
    return this.alu(O.BPF_ALU, op, dst, v);
  }

  /** dst = src register, or dst = imm(value). */
  mov64(dst: Reg, v: Operand): this {
    return this.alu64('mov', dst, v);
  }

  /** mov64 with an immediate, never read as a register. */
  movImm(dst: Reg, value: number): this {
    return this.alu64('mov', dst, imm(value));
  }

  mov32(dst: Reg, v: Operand): this {
    return this.alu32('mov', dst, v);
  }

  /** Sign-extending register move (ISA v4): dst = (s8|s16|s32) src. */
  movsx64(dst: Reg, src: Reg, bits: 8 | 16 | 32): this {
    return this.raw({ code: O.BPF_ALU64 | O.BPF_MOV | O.BPF_X, dst, src, off: bits, imm: 0 });
  }

  neg64(dst: Reg): this {
    return this.raw({ code: O.BPF_ALU64 | O.BPF_NEG, dst, src: 0, off: 0, imm: 0 });
  }

  neg32(dst: Reg): this {
    return this.raw({ code: O.BPF_ALU | O.BPF_NEG, dst, src: 0, off: 0, imm: 0 });
  }

  /** Convert dst from host (little-endian) order to big-endian, keeping the low `bits`. */
  be(dst: Reg, bits: 16 | 32 | 64): this {
    return this.raw({ code: O.BPF_ALU | O.BPF_END | O.BPF_TO_BE, dst, src: 0, off: 0, imm: bits });
  }

  le(dst: Reg, bits: 16 | 32 | 64): this {
    return this.raw({ code: O.BPF_ALU | O.BPF_END | O.BPF_TO_LE, dst, src: 0, off: 0, imm: bits });
  }

  /** Unconditional byte swap (ISA v4). */
  bswap(dst: Reg, bits: 16 | 32 | 64): this {
    return this.raw({ code: O.BPF_ALU64 | O.BPF_END, dst, src: 0, off: 0, imm: bits });
  }

  /** dst = *(size *)(src + off) */
  ldx(size: Size, dst: Reg, src: Reg, off: number): this {
    return this.raw({ code: O.BPF_LDX | O.BPF_MEM | O.sizeOfBytes(size), dst, src, off, imm: 0 });
  }

  /** Sign-extending load (ISA v4): dst = *(s8|s16|s32 *)(src + off) */
  ldxsx(size: 1 | 2 | 4, dst: Reg, src: Reg, off: number): this {
    return this.raw({ code: O.BPF_LDX | O.BPF_MEMSX | O.sizeOfBytes(size), dst, src, off, imm: 0 });
  }

  /** *(size *)(dst + off) = src */
  stx(size: Size, dst: Reg, off: number, src: Reg): this {
    return this.raw({ code: O.BPF_STX | O.BPF_MEM | O.sizeOfBytes(size), dst, src, off, imm: 0 });
  }

  /** *(size *)(dst + off) = value */
  st(size: Size, dst: Reg, off: number, value: number): this {
    return this.raw({ code: O.BPF_ST | O.BPF_MEM | O.sizeOfBytes(size), dst, src: 0, off, imm: value });
  }

  /** Atomic read-modify-write: `op` is BPF_ADD, BPF_OR, BPF_AND, BPF_XOR (optionally | BPF_FETCH), BPF_XCHG, BPF_CMPXCHG. */
  atomic(size: 4 | 8, dst: Reg, off: number, src: Reg, op: number): this {
    return this.raw({ code: O.BPF_STX | O.BPF_ATOMIC | O.sizeOfBytes(size), dst, src, off, imm: op });
  }

  /** lock *(size *)(dst + off) += src */
  atomicAdd(size: 4 | 8, dst: Reg, off: number, src: Reg): this {
    return this.atomic(size, dst, off, src, O.BPF_ADD);
  }

  /** dst = 64-bit constant. */
  ldImm64(dst: Reg, value: bigint | number): this {
    const v = BigInt.asUintN(64, BigInt(value));
    const lo = Number(v & 0xffffffffn) | 0;
    const hi = Number(v >> 32n) | 0;
    return this.raw({ code: O.LD_IMM64, dst, src: 0, off: 0, imm: lo, imm2: hi });
  }

  /** dst = pointer to map `name` (its fd, filled in by the loader). */
  ldMap(dst: Reg, name: string): this {
    this.items.push({ insn: { code: O.LD_IMM64, dst, src: O.BPF_PSEUDO_MAP_FD, off: 0, imm: 0, imm2: 0 }, map: { name, kind: 'fd', offset: 0 } });
    return this;
  }

  /** dst = address of byte `offset` of the single value of array map `name`. */
  ldMapValue(dst: Reg, name: string, offset = 0): this {
    this.items.push({
      insn: { code: O.LD_IMM64, dst, src: O.BPF_PSEUDO_MAP_VALUE, off: 0, imm: 0, imm2: offset },
      map: { name, kind: 'value', offset },
    });
    return this;
  }

  /** Conditional jump on 64-bit values. */
  jmp(op: JmpOp, dst: Reg, v: Operand, target: string): this {
    return this.cond(O.BPF_JMP, op, dst, v, target);
  }

  /** Conditional jump on the low 32 bits. */
  jmp32(op: JmpOp, dst: Reg, v: Operand, target: string): this {
    return this.cond(O.BPF_JMP32, op, dst, v, target);
  }

  private cond(cls: number, op: JmpOp, dst: Reg, v: Operand, target: string): this {
    const insn: Insn = isImm(v)
      ? { code: cls | JMP[op] | O.BPF_K, dst, src: 0, off: 0, imm: v.imm }
      : { code: cls | JMP[op] | O.BPF_X, dst, src: v, off: 0, imm: 0 };
    this.items.push({ insn, jump: target });
    return this;
  }

  ja(target: string): this {
    this.items.push({ insn: { code: O.BPF_JMP | O.BPF_JA, dst: 0, src: 0, off: 0, imm: 0 }, jump: target });
    return this;
  }

  /** Call helper number `id`. */
  call(id: number): this {
    return this.raw({ code: O.BPF_JMP | O.BPF_CALL, dst: 0, src: 0, off: 0, imm: id });
  }

  /** bpf-to-bpf call of the function starting at `target`. */
  callLocal(target: string): this {
    this.items.push({ insn: { code: O.BPF_JMP | O.BPF_CALL, dst: 0, src: O.BPF_PSEUDO_CALL, off: 0, imm: 0 }, call: target });
    return this;
  }

  exit(): this {
    return this.raw({ code: O.BPF_JMP | O.BPF_EXIT, dst: 0, src: 0, off: 0, imm: 0 });
  }

  /** Resolve labels into offsets (counted in 8-byte slots, as the kernel counts them). */
  assemble(): Assembled {
    const slotOf: number[] = [];
    let slot = 0;
    for (const it of this.items) {
      slotOf.push(slot);
      slot += it.insn.code === O.LD_IMM64 ? 2 : 1;
    }
    slotOf.push(slot);
    const resolve = (name: string, from: number): number => {
      const at = this.labelAt.get(name);
      if (at === undefined) throw new AsmError(`jump to undefined label "${name}"`);
      return slotOf[at]! - (slotOf[from]! + 1);
    };
    const insns: Insn[] = [];
    const mapRefs: MapRef[] = [];
    this.items.forEach((it, i) => {
      const insn = { ...it.insn };
      if (it.jump !== undefined) {
        const off = resolve(it.jump, i);
        if (off < -32768 || off > 32767) throw new AsmError(`jump to "${it.jump}" is ${off} slots, beyond 16 bits`);
        insn.off = off;
      }
      if (it.call !== undefined) insn.imm = resolve(it.call, i);
      if (it.map) mapRefs.push({ index: i, map: it.map.name, kind: it.map.kind, offset: it.map.offset });
      insns.push(insn);
    });
    return { insns, mapRefs, labels: new Map(this.labelAt) };
  }
}
