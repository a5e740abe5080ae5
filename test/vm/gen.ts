/**
 * Random eBPF programs for differential tests (fast-check arbitraries): every register set
 * to a random 64-bit constant, then random ALU operations (all ops, 32/64-bit, register and
 * immediate, negation, byte swaps, sign-extending moves), forward conditional jumps (64 and
 * 32-bit, every condition) and stack spill/fill round trips (including sign-extending
 * fills), ending in r0 = a fold of every register. Constraints keep every program one the
 * kernel's verifier accepts: no constant zero divisors, constant shifts below the width,
 * no reads of stack bytes not written first, only forward jumps. `{ v4: false }` leaves out
 * the cpu v4 instructions (sdiv/smod, movsx, sign-extending loads, bswap), for kernels before
 * 6.6, whose verifier refuses them.
 */
import fc from 'fast-check';
import { Assembler, imm, type AluOp, type JmpOp } from '../../src/bpf/asm.js';
import type { Insn } from '../../src/bpf/insn.js';
import type { Reg } from '../../src/bpf/opcodes.js';

const ALU: AluOp[] = ['add', 'sub', 'mul', 'div', 'sdiv', 'or', 'and', 'lsh', 'rsh', 'mod', 'smod', 'xor', 'mov', 'arsh'];
const JMP: JmpOp[] = ['jeq', 'jgt', 'jge', 'jset', 'jne', 'jsgt', 'jsge', 'jlt', 'jle', 'jslt', 'jsle'];

type Op =
  | { kind: 'alu'; is64: boolean; op: AluOp; dst: Reg; src: Reg | null; k: number }
  | { kind: 'neg'; is64: boolean; dst: Reg }
  | { kind: 'end'; how: 'be' | 'le' | 'bswap'; bits: 16 | 32 | 64; dst: Reg }
  | { kind: 'movsx'; is64: boolean; bits: 8 | 16 | 32; dst: Reg; src: Reg }
  | { kind: 'jmp'; is64: boolean; op: JmpOp; dst: Reg; src: Reg | null; k: number; skip: number }
  | { kind: 'spill'; slot: number; src: Reg; dst: Reg; size: 1 | 2 | 4 | 8; at: number; signed: boolean };

const reg = fc.integer({ min: 0, max: 9 }) as fc.Arbitrary<Reg>;
const int32 = fc.oneof(
  fc.integer({ min: -0x80000000, max: 0x7fffffff }),
  fc.constantFrom(0, 1, -1, 2, 31, 32, 63, 0x7fffffff, -0x80000000, 0xffff, 0x80),
);
const int64 = fc.oneof(
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  fc.constantFrom(0n, 1n, (1n << 64n) - 1n, 1n << 63n, (1n << 63n) - 1n, 0xffffffffn, 0x80000000n, 1n << 32n, 0xffffffff80000000n),
);

const ALU_V3 = ALU.filter((op) => op !== 'sdiv' && op !== 'smod');

function opArb(v4: boolean): fc.Arbitrary<Op> {
  const ends = v4 ? (['be', 'le', 'bswap'] as const) : (['be', 'le'] as const);
  const arbs: fc.WeightedArbitrary<Op>[] = [
    { weight: 10, arbitrary: fc.record({ kind: fc.constant('alu' as const), is64: fc.boolean(), op: fc.constantFrom(...(v4 ? ALU : ALU_V3)), dst: reg, src: fc.option(reg, { nil: null }), k: int32 }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('neg' as const), is64: fc.boolean(), dst: reg }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('end' as const), how: fc.constantFrom(...ends), bits: fc.constantFrom(16 as const, 32 as const, 64 as const), dst: reg }) },
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('jmp' as const), is64: fc.boolean(), op: fc.constantFrom(...JMP), dst: reg, src: fc.option(reg, { nil: null }), k: int32, skip: fc.integer({ min: 0, max: 6 }) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('spill' as const), slot: fc.integer({ min: 1, max: 64 }), src: reg, dst: reg, size: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const), at: fc.integer({ min: 0, max: 7 }), signed: v4 ? fc.boolean() : fc.constant(false) }) },
  ];
  // movsx fourth, where it always was, so that a seed gives the same v4 programs as before.
  if (v4) arbs.splice(3, 0, { weight: 1, arbitrary: fc.record({ kind: fc.constant('movsx' as const), is64: fc.boolean(), bits: fc.constantFrom(8 as const, 16 as const, 32 as const), dst: reg, src: reg }) });
  return fc.oneof(...arbs);
}

export interface RandomProgram {
  insns: Insn[];
  /** Short description for failure reports. */
  ops: Op[];
}

function build(init: bigint[], ops: Op[]): Insn[] {
  const a = new Assembler();
  init.forEach((v, r) => a.ldImm64(r as Reg, v));
  ops.forEach((o, i) => {
    a.label(`op${i}`);
    switch (o.kind) {
      case 'alu': {
        const width = o.is64 ? 64 : 32;
        const isShift = o.op === 'lsh' || o.op === 'rsh' || o.op === 'arsh';
        const isDiv = o.op === 'div' || o.op === 'sdiv' || o.op === 'mod' || o.op === 'smod';
        let operand: Reg | { imm: number };
        if (o.src !== null) operand = o.src;
        else if (isShift) operand = imm(((o.k % width) + width) % width);
        else if (isDiv && o.k === 0) operand = imm(7);
        else operand = imm(o.k);
        if (o.is64) a.alu64(o.op, o.dst, operand);
        else a.alu32(o.op, o.dst, operand);
        break;
      }
      case 'neg':
        if (o.is64) a.neg64(o.dst); else a.neg32(o.dst);
        break;
      case 'end':
        if (o.how === 'be') a.be(o.dst, o.bits); else if (o.how === 'le') a.le(o.dst, o.bits); else a.bswap(o.dst, o.bits);
        break;
      case 'movsx':
        if (o.is64) a.movsx64(o.dst, o.src, o.bits);
        else a.raw({ code: 0x04 | 0xb0 | 0x08, dst: o.dst, src: o.src, off: o.bits === 32 ? 16 : o.bits, imm: 0 });
        break;
      case 'jmp': {
        const target = Math.min(i + 1 + o.skip, ops.length);
        const operand = o.src !== null ? o.src : imm(o.k);
        if (o.is64) a.jmp(o.op, o.dst, operand, `op${target}`);
        else a.jmp32(o.op, o.dst, operand, `op${target}`);
        break;
      }
      case 'spill': {
        const off = -8 * o.slot;
        const at = o.at - (o.at % o.size);
        a.stx(8, 10, off, o.src);
        if (o.signed && o.size !== 8) a.ldxsx(o.size, o.dst, 10, off + at);
        else a.ldx(o.size, o.dst, 10, off + at);
        break;
      }
    }
  });
  a.label(`op${ops.length}`);
  for (let r = 1; r <= 9; r++) a.alu64('xor', 0, r as Reg);
  a.mov64(1, 0).alu64('rsh', 1, imm(32)).alu64('xor', 0, 1).exit();
  return a.assemble().insns;
}

export function randomProgram(maxOps = 40, opts: { v4?: boolean } = {}): fc.Arbitrary<RandomProgram> {
  return fc
    .tuple(fc.array(int64, { minLength: 10, maxLength: 10 }), fc.array(opArb(opts.v4 ?? true), { minLength: 1, maxLength: maxOps }))
    .map(([init, ops]) => ({ insns: build(init, ops), ops }));
}
