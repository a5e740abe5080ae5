import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encode, decode, slotCount, slots, imm64, DecodeError, LD_IMM64, type Insn } from '../../src/bpf/index.js';

const insnOf = (code: number): fc.Arbitrary<Insn> =>
  fc.record({
    code: fc.constant(code),
    dst: fc.integer({ min: 0, max: 15 }),
    src: fc.integer({ min: 0, max: 15 }),
    off: fc.integer({ min: -32768, max: 32767 }),
    imm: fc.integer({ min: -0x80000000, max: 0x7fffffff }),
  }).chain((i) => (code === LD_IMM64
    ? fc.integer({ min: -0x80000000, max: 0x7fffffff }).map((imm2): Insn => ({ ...i, imm2 }))
    : fc.constant<Insn>({ ...i })));

const anyInsn = fc.integer({ min: 0, max: 255 }).chain(insnOf);

test('every opcode survives encode → decode with any field values', () => {
  for (let code = 0; code < 256; code++) {
    fc.assert(fc.property(insnOf(code), (insn) => {
      const bytes = encode([insn]);
      assert.equal(bytes.length, slots(insn) * 8);
      assert.deepEqual(decode(bytes), [insn]);
    }), { numRuns: 40 });
  }
});

test('field extremes of every opcode survive encode → decode', () => {
  for (let code = 0; code < 256; code++) {
    for (const [dst, src, off, imm] of [[0, 0, 0, 0], [15, 15, -32768, -0x80000000], [10, 1, 32767, 0x7fffffff], [1, 10, -1, -1]] as const) {
      const insn: Insn = code === LD_IMM64 ? { code, dst, src, off, imm, imm2: imm ^ 0x5a5a5a5a } : { code, dst, src, off, imm };
      assert.deepEqual(decode(encode([insn])), [insn], `opcode 0x${code.toString(16)}`);
    }
  }
});

test('sequences keep their order and slot accounting', () => {
  fc.assert(fc.property(fc.array(anyInsn, { maxLength: 40 }), (insns) => {
    const bytes = encode(insns);
    assert.equal(bytes.length, slotCount(insns) * 8);
    assert.deepEqual(decode(bytes), insns);
    assert.deepEqual(encode(decode(bytes)), bytes);
  }));
});

test('the wire format is code, dst|src<<4, off (LE), imm (LE)', () => {
  const bytes = encode([{ code: 0x61, dst: 1, src: 6, off: 76, imm: 0 }, { code: 0xb7, dst: 0, src: 0, off: -2, imm: -2 }]);
  assert.deepEqual([...bytes], [0x61, 0x61, 0x4c, 0, 0, 0, 0, 0, 0xb7, 0, 0xfe, 0xff, 0xfe, 0xff, 0xff, 0xff]);
  const wide = encode([{ code: LD_IMM64, dst: 1, src: 2, off: 0, imm: 0x1234, imm2: -1 }]);
  assert.deepEqual([...wide], [0x18, 0x21, 0, 0, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
});

test('unsigned 32-bit immediates are accepted and come back signed', () => {
  const [back] = decode(encode([{ code: 0xb4, dst: 0, src: 0, off: 0, imm: 0xffffffff }]));
  assert.equal(back!.imm, -1);
  assert.equal(imm64({ code: LD_IMM64, dst: 0, src: 0, off: 0, imm: -1, imm2: 0x7fffffff }), 0x7fffffffffffffffn);
  assert.equal(imm64({ code: LD_IMM64, dst: 0, src: 0, off: 0, imm: 0, imm2: -1 }), -0x100000000n, 'signed');
  assert.equal(imm64({ code: LD_IMM64, dst: 0, src: 0, off: 0, imm: -1, imm2: 0 }), 0xffffffffn);
});

test('encode refuses fields that do not fit', () => {
  const base: Insn = { code: 0xb7, dst: 0, src: 0, off: 0, imm: 0 };
  assert.throws(() => encode([{ ...base, code: 256 }]), RangeError);
  assert.throws(() => encode([{ ...base, code: 1.5 }]), RangeError);
  assert.throws(() => encode([{ ...base, dst: 16 }]), RangeError);
  assert.throws(() => encode([{ ...base, src: -1 }]), RangeError);
  assert.throws(() => encode([{ ...base, off: 32768 }]), RangeError);
  assert.throws(() => encode([{ ...base, imm: 0x100000000 }]), RangeError);
  assert.throws(() => encode([{ ...base, imm: -0x80000001 }]), RangeError);
  assert.throws(() => encode([{ ...base, code: LD_IMM64, imm2: 0x100000000 }]), RangeError);
});

test('decode refuses truncated bytecode', () => {
  assert.throws(() => decode(new Uint8Array(7)), DecodeError);
  assert.throws(() => decode(new Uint8Array([0x18, 1, 0, 0, 0, 0, 0, 0])), DecodeError);
  assert.deepEqual(decode(new Uint8Array(0)), []);
});

test('decode reads from a view into a larger buffer', () => {
  const bytes = encode([{ code: 0x95, dst: 0, src: 0, off: 0, imm: 0 }]);
  const big = new Uint8Array(24);
  big.set(bytes, 8);
  assert.deepEqual(decode(big.subarray(8, 16)), [{ code: 0x95, dst: 0, src: 0, off: 0, imm: 0 }]);
});
