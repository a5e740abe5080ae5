import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Assembler, AsmError, imm, encode, decode, disassemble, formatListing, Helper,
  R0, R1, R2, R3, R6, R10, LD_IMM64, BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE, BPF_PSEUDO_CALL,
  BPF_XCHG, BPF_CMPXCHG, BPF_OR, BPF_FETCH,
} from '../../src/bpf/index.js';

const text = (a: Assembler, hex = false): string[] => {
  const { insns, labels } = a.assemble();
  return disassemble(insns, { hex, labels });
};

test('forward and backward jumps resolve to slot offsets', () => {
  const a = new Assembler()
    .label('top')
    .jmp('jeq', R1, imm(0), 'end')
    .alu64('add', R1, imm(-1))
    .jmp('jne', R1, R2, 'top')
    .ja('top')
    .label('end')
    .exit();
  const { insns, labels } = a.assemble();
  assert.deepEqual(insns.map((i) => i.off), [3, 0, -3, -4, 0]);
  assert.deepEqual([...labels], [['top', 0], ['end', 4]]);
  assert.deepEqual(disassemble(insns, { hex: false, labels }), [
    'if r1 == 0 goto +3 <end>',
    'r1 += -1',
    'if r1 != r2 goto -3 <top>',
    'goto -4 <top>',
    'exit',
  ]);
});

test('a 64-bit immediate between a jump and its target counts two slots', () => {
  const { insns } = new Assembler()
    .jmp('jgt', R1, imm(5), 'after')
    .ldImm64(R2, 0x1122334455667788n)
    .ldMap(R3, 'm')
    .label('after')
    .jmp32('jlt', R1, imm(1), 'before')
    .exit()
    .label('before')
    .ja('after')
    .assemble();
  assert.equal(insns[0]!.off, 4, 'two LD_IMM64 are four slots');
  assert.equal(insns[3]!.off, 1);
  assert.equal(insns[5]!.off, -3, 'back from slot 7 to slot 5, counted from the slot after the jump');
  assert.equal(encode(insns).length, 8 * 8);
});

test('a label at the very end is a valid target', () => {
  const { insns } = new Assembler().ja('end').movImm(R0, 1).label('end').assemble();
  assert.equal(insns[0]!.off, 1);
});

test('undefined and duplicate labels are errors', () => {
  assert.throws(() => new Assembler().ja('nowhere').exit().assemble(), (e: unknown) => e instanceof AsmError && /undefined label "nowhere"/.test(e.message));
  assert.throws(() => new Assembler().callLocal('nofunc').exit().assemble(), AsmError);
  assert.throws(() => new Assembler().label('x').exit().label('x'), (e: unknown) => e instanceof AsmError && /"x" defined twice/.test(e.message));
});

test('a jump beyond 16 bits is an error', () => {
  const a = new Assembler().ja('far');
  for (let i = 0; i < 32768; i++) a.movImm(R0, 0);
  a.label('far').exit();
  assert.throws(() => a.assemble(), (e: unknown) => e instanceof AsmError && /beyond 16 bits/.test(e.message));
  const b = new Assembler().ja('near');
  for (let i = 0; i < 32767; i++) b.movImm(R0, 0);
  b.label('near').exit();
  assert.equal(b.assemble().insns[0]!.off, 32767);
});

test('bpf-to-bpf calls put the slot offset in imm and mark src as a pseudo call', () => {
  const { insns } = new Assembler()
    .label('main')
    .callLocal('sub')
    .ldImm64(R1, 1)
    .exit()
    .label('sub')
    .callLocal('main')
    .movImm(R0, 0)
    .exit()
    .assemble();
  assert.equal(insns[0]!.src, BPF_PSEUDO_CALL);
  assert.equal(insns[0]!.imm, 3, 'slot 4 from slot 0 + 1');
  assert.equal(insns[0]!.off, 0);
  assert.equal(insns[3]!.imm, -5, 'slot 0 from slot 4 + 1');
});

test('map references record instruction index, kind and offset', () => {
  const { insns, mapRefs } = new Assembler()
    .movImm(R1, 0)
    .ldMap(R1, 'counts')
    .ldImm64(R2, 7)
    .ldMapValue(R3, 'config', 16)
    .exit()
    .assemble();
  assert.deepEqual(mapRefs, [
    { index: 1, map: 'counts', kind: 'fd', offset: 0 },
    { index: 3, map: 'config', kind: 'value', offset: 16 },
  ]);
  assert.deepEqual(insns[1], { code: LD_IMM64, dst: 1, src: BPF_PSEUDO_MAP_FD, off: 0, imm: 0, imm2: 0 });
  assert.deepEqual(insns[3], { code: LD_IMM64, dst: 3, src: BPF_PSEUDO_MAP_VALUE, off: 0, imm: 0, imm2: 16 });
  assert.deepEqual(disassemble(insns, { hex: false }), ['r1 = 0', 'ld_pseudo\tr1, 1, 0', 'r2 = 7 ll', 'ld_pseudo\tr3, 2, 0', 'exit']);
});

test('every builder method produces the instruction objdump names', () => {
  const a = new Assembler()
    .ldx(4, R1, R6, 76).ldx(1, R1, R6, 0).ldx(2, R1, R6, -2).ldx(8, R1, R10, -8)
    .ldxsx(1, R1, R2, 0).ldxsx(2, R1, R2, 2).ldxsx(4, R1, R2, 4)
    .stx(1, R10, -1, R1).stx(8, R10, -8, R2).st(4, R10, -4, 7).st(8, R10, -16, -1)
    .mov32(R0, imm(2)).mov32(R0, R1).mov64(R0, R1).movImm(R0, -2).movsx64(R0, R1, 8).movsx64(R0, R1, 32)
    .alu32('sdiv', R0, imm(3)).alu64('smod', R0, R1).alu64('arsh', R0, imm(1)).alu32('xor', R1, R2)
    .neg64(R0).neg32(R0).be(R0, 16).le(R0, 64).bswap(R0, 32)
    .atomicAdd(8, R1, 0, R2).atomicAdd(4, R1, 4, R2)
    .atomic(8, R1, 0, R2, BPF_OR | BPF_FETCH).atomic(8, R1, 0, R2, BPF_XCHG).atomic(4, R1, 0, R2, BPF_CMPXCHG)
    .ldImm64(R1, 0x1234).ldImm64(R1, -1)
    .call(Helper.get_prandom_u32)
    .jmp('jsgt', R1, imm(5), 'x').jmp32('jsle', R1, R2, 'x').jmp('jset', R1, imm(0x100), 'x')
    .label('x').exit();
  assert.deepEqual(text(a), [
    'r1 = *(u32 *)(r6 + 76)', 'r1 = *(u8 *)(r6 + 0)', 'r1 = *(u16 *)(r6 - 2)', 'r1 = *(u64 *)(r10 - 8)',
    'r1 = *(s8 *)(r2 + 0)', 'r1 = *(s16 *)(r2 + 2)', 'r1 = *(s32 *)(r2 + 4)',
    '*(u8 *)(r10 - 1) = r1', '*(u64 *)(r10 - 8) = r2', '*(u32 *)(r10 - 4) = 7', '*(u64 *)(r10 - 16) = -1',
    'w0 = 2', 'w0 = w1', 'r0 = r1', 'r0 = -2', 'r0 = (s8)r1', 'r0 = (s32)r1',
    'w0 s/= 3', 'r0 s%= r1', 'r0 s>>= 1', 'w1 ^= w2',
    'r0 = -r0', 'w0 = -w0', 'r0 = be16 r0', 'r0 = le64 r0', 'r0 = bswap32 r0',
    'lock *(u64 *)(r1 + 0) += r2', 'lock *(u32 *)(r1 + 4) += r2',
    'r2 = atomic_fetch_or((u64 *)(r1 + 0), r2)', 'r2 = xchg_64(r1 + 0, r2)', '<unknown>',
    'r1 = 4660 ll', 'r1 = -1 ll',
    'call 7',
    'if r1 s> 5 goto +2 <x>', 'if w1 s<= w2 goto +1 <x>', 'if r1 & 256 goto +0 <x>',
    'exit',
  ]);
  // The 32-bit cmpxchg exists only with alu32, as in llvm-objdump without --mcpu=v3.
  assert.equal(disassemble(a.assemble().insns, { hex: false, alu32: true })[30], 'w0 = cmpxchg32_32(r1 + 0, w0, w2)');
  assert.deepEqual(decode(encode(a.assemble().insns)), a.assemble().insns);
});

test('a listing shows slot numbers and raw bytes like objdump', () => {
  const { insns } = new Assembler().ldImm64(R1, 0x1234).ldx(4, R1, R6, 76).exit().assemble();
  assert.deepEqual(formatListing(insns), [
    '       0:\t18 01 00 00 34 12 00 00 00 00 00 00 00 00 00 00\tr1 = 0x1234 ll',
    '       2:\t61 61 4c 00 00 00 00 00\tr1 = *(u32 *)(r6 + 0x4c)',
    '       3:\t95 00 00 00 00 00 00 00\texit',
  ]);
  assert.deepEqual(formatListing(insns, { rawBytes: false, hex: false }), [
    '       0:\tr1 = 4660 ll',
    '       2:\tr1 = *(u32 *)(r6 + 76)',
    '       3:\texit',
  ]);
});
