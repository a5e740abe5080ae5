import { test } from 'node:test';
import assert from 'node:assert/strict';
import { disassemble, formatInsn, formatListing, encode, LD_IMM64, type Insn } from '../../src/bpf/index.js';

const I = (code: number, dst = 0, src = 0, off = 0, imm = 0, imm2?: number): Insn =>
  imm2 === undefined ? { code, dst, src, off, imm } : { code, dst, src, off, imm, imm2 };

test('instruction text in decimal and in hex', () => {
  const cases: Array<[Insn, string, string]> = [
    [I(0x61, 1, 6, 76), 'r1 = *(u32 *)(r6 + 76)', 'r1 = *(u32 *)(r6 + 0x4c)'],
    [I(0x2d, 2, 1, 22), 'if r2 > r1 goto +22', 'if r2 > r1 goto +0x16'],
    [I(0x2d, 2, 1, -2), 'if r2 > r1 goto -2', 'if r2 > r1 goto -0x2'],
    [I(0xb4, 0, 0, 0, 2), 'w0 = 2', 'w0 = 0x2'],
    [I(0x85, 0, 0, 0, 5), 'call 5', 'call 0x5'],
    [I(LD_IMM64, 1, 0, 0, 0x1234, 0), 'r1 = 4660 ll', 'r1 = 0x1234 ll'],
    [I(LD_IMM64, 1, 0, 0, 0, -0x80000000), 'r1 = -9223372036854775808 ll', 'r1 = -0x8000000000000000 ll'],
    [I(0xdb, 1, 2, 0, 0), 'lock *(u64 *)(r1 + 0) += r2', 'lock *(u64 *)(r1 + 0x0) += r2'],
    [I(0xdc, 0, 0, 0, 16), 'r0 = be16 r0', 'r0 = be16 r0'],
    [I(0x95), 'exit', 'exit'],
    [I(0x66, 1, 0, 1, -5), 'if w1 s> -5 goto +1', 'if w1 s> -0x5 goto +0x1'],
    [I(0x3f, 1, 2, 1), 'r1 s/= r2', 'r1 s/= r2'],
    [I(0x94, 1, 0, 1, 7), 'w1 s%= 7', 'w1 s%= 0x7'],
    [I(0x91, 1, 2, 0), 'r1 = *(s8 *)(r2 + 0)', 'r1 = *(s8 *)(r2 + 0x0)'],
    [I(0x06, 0, 0, 0, -70000), 'gotol -70000', 'gotol -0x11170'],
    [I(0xbf, 1, 2, 16), 'r1 = (s16)r2', 'r1 = (s16)r2'],
    [I(0x72, 10, 0, -8, 1), '*(u8 *)(r10 - 8) = 1', '*(u8 *)(r10 - 0x8) = 0x1'],
    [I(0xe5, 0, 0, 3), 'may_goto +3', 'may_goto +0x3'],
    [I(0x8d, 3), 'callx r3', 'callx r3'],
    [I(0x20, 0, 0, 0, -1), 'r0 = *(u32 *)skb[-1]', 'r0 = *(u32 *)skb[-0x1]'],
    [I(0x07, 1, 0, 0, -0x80000000), 'r1 += -2147483648', 'r1 += -0x80000000'],
  ];
  for (const [insn, dec, hex] of cases) {
    assert.equal(formatInsn(insn, { hex: false }), dec);
    assert.equal(formatInsn(insn), hex, 'hex is the default');
  }
});

test('instructions LLVM refuses print as <unknown>', () => {
  for (const insn of [
    I(0x07, 12, 0, 0, 1), // r12
    I(0x07, 1, 0, 1, 1), // add with an offset
    I(0x95, 0, 0, 0, 1), // exit with an imm
    I(0xdc, 1, 0, 0, 8), // be8
    I(0xdf, 1), // bswap with the X bit
    I(0x0d), // ja with the X bit
    I(0x00), // LD|W|IMM
    I(LD_IMM64, 1, 0, 1, 0, 0), // LD_IMM64 with an offset
    I(0xc3, 1, 2, 0, 0x40), // 32-bit atomic or without alu32
    I(0xdb, 1, 2, 0, 0xe0), // xchg without the fetch bit
  ]) {
    assert.equal(formatInsn(insn), '<unknown>', JSON.stringify(insn));
  }
  assert.equal(formatInsn(I(0xc3, 1, 2, 0, 0x40), { alu32: true }), 'lock *(u32 *)(r1 + 0x0) |= w2');
});

test('alu32 names w registers in narrow loads and stores only', () => {
  const insns = [I(0x61, 1, 2, 4), I(0x69, 1, 2, 4), I(0x79, 1, 2, 4), I(0x63, 1, 2, 4), I(0x7b, 1, 2, 4), I(0x81, 1, 2, 4)];
  assert.deepEqual(disassemble(insns, { hex: false, alu32: true }), [
    'w1 = *(u32 *)(r2 + 4)', 'w1 = *(u16 *)(r2 + 4)', 'r1 = *(u64 *)(r2 + 4)',
    '*(u32 *)(r1 + 4) = w2', '*(u64 *)(r1 + 4) = r2', 'r1 = *(s32 *)(r2 + 4)',
  ]);
});

test('jump targets are annotated from the nearest symbol below, comparing unsigned addresses as objdump does', () => {
  const insns = [I(0x05, 0, 0, 1), I(0x05, 0, 0, -3), I(0x95), I(0x95)];
  const symbols = new Map([['f', 0], ['g', 3]]);
  assert.deepEqual(disassemble(insns, { symbols }), [
    'goto +0x1 <f+0x10>',
    'goto -0x3 <g+0xffffffffffffffe0>',
    'exit',
    'exit',
  ]);
  assert.deepEqual(formatListing(insns, { symbols, headers: true, rawBytes: false }), [
    '', '0000000000000000 <f>:',
    '       0:\tgoto +0x1 <f+0x10>',
    '       1:\tgoto -0x3 <g+0xffffffffffffffe0>',
    '       2:\texit',
    '', '0000000000000018 <g>:',
    '       3:\texit',
  ]);
});

test('helper calls can carry the helper name; local calls and unknown ids do not', () => {
  const insns = [I(0x85, 0, 0, 0, 7), I(0x85, 0, 1, 0, 7), I(0x85, 0, 0, 0, 9999), I(0x95)];
  assert.deepEqual(disassemble(insns, { helperNames: true, hex: false }), ['call 7 <get_prandom_u32>', 'call 7', 'call 9999', 'exit']);
  assert.deepEqual(disassemble(insns, { hex: false }), ['call 7', 'call 7', 'call 9999', 'exit']);
});

test('bytes are walked as objdump walks them', () => {
  // A 64-bit load with an offset is not one: 8 bytes of <unknown>, then the second slot alone.
  const bad = encode([I(LD_IMM64, 1, 0, 1, 5, 0), I(0x95)]);
  assert.deepEqual(disassemble(bad), ['<unknown>', '<unknown>', 'exit']);
  // A short tail is reported byte by byte.
  const tail = new Uint8Array([...encode([I(0x95)]), 1, 2]);
  assert.deepEqual(formatListing(tail, { rawBytes: true }), ['       0:\t95 00 00 00 00 00 00 00\texit', '       1:\t01\t<unknown>', '       1:\t02\t<unknown>']);
  // A run of zeroes is one "..." line unless asked otherwise.
  const zeros = new Uint8Array([...encode([I(0x95)]), ...new Uint8Array(16), ...encode([I(0x95)])]);
  assert.deepEqual(formatListing(zeros, { rawBytes: false }), ['       0:\texit', '\t\t...', '       3:\texit']);
  assert.deepEqual(formatListing(zeros, { rawBytes: false, skipZeroes: false }), ['       0:\texit', '       1:\t<unknown>', '       2:\t<unknown>', '       3:\texit']);
  // After a 12-byte zero run the walk is unaligned, and so are jump targets.
  const unaligned = new Uint8Array([...encode([I(0x95)]), ...new Uint8Array(12), ...encode([I(0x05, 0, 0, 1), I(0x95)])]);
  assert.deepEqual(formatListing(unaligned, { symbols: new Map([['f', 0]]) }), [
    '       0:\t95 00 00 00 00 00 00 00\texit',
    '\t\t...',
    '       2:\t05 00 01 00 00 00 00 00\tgoto +0x1 <f+0x24>',
    '       3:\t95 00 00 00 00 00 00 00\texit',
  ]);
  assert.deepEqual(disassemble(new Uint8Array(0)), []);
});
