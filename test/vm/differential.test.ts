/**
 * Differential property tests: random ALU/JMP/stack programs give the same r0 on the
 * interpreter and the JIT (and the same error, if any).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Vm } from '../../src/vm/vm.js';
import { randomProgram } from './gen.js';
import { packet } from './support.js';
import * as I64 from '../../src/vm/int64.js';

const pkt = packet(64);

test('random straight-line and branching programs: interpreter and JIT return the same r0', () => {
  fc.assert(
    fc.property(randomProgram(60), (p) => {
      const outcome = (engine: 'interpreter' | 'jit'): string => {
        try {
          return String(new Vm(p.insns, { programType: 'xdp', engine }).run(pkt).retval);
        } catch (err) {
          return `error: ${(err as Error).message}`;
        }
      };
      const a = outcome('interpreter');
      assert.ok(!a.startsWith('error'), a);
      assert.equal(outcome('jit'), a);
    }),
    { numRuns: 1500 },
  );
});

test('64-bit helpers agree with BigInt on random operands', () => {
  const u = (h: number, l: number): bigint => I64.toBigUint(h, l);
  const M = (1n << 64n) - 1n;
  fc.assert(
    fc.property(fc.integer({ min: -0x80000000, max: 0x7fffffff }), fc.integer({ min: -0x80000000, max: 0x7fffffff }), fc.integer({ min: -0x80000000, max: 0x7fffffff }), fc.integer({ min: -0x80000000, max: 0x7fffffff }), (ah, al, bh, bl) => {
      const a = u(ah, al), b = u(bh, bl);
      const sa = BigInt.asIntN(64, a), sb = BigInt.asIntN(64, b);
      const got = (lo: number): bigint => u(I64.HI[0]!, lo);
      assert.equal(got(I64.mul64(ah, al, bh, bl)), (a * b) & M);
      assert.equal(got(I64.udiv64(ah, al, bh, bl)), b === 0n ? 0n : a / b);
      assert.equal(got(I64.umod64(ah, al, bh, bl)), b === 0n ? a : a % b);
      assert.equal(got(I64.sdiv64(ah, al, bh, bl)), b === 0n ? 0n : BigInt.asUintN(64, sa / sb));
      assert.equal(got(I64.smod64(ah, al, bh, bl)), b === 0n ? a : BigInt.asUintN(64, sa % sb));
      assert.equal(Math.sign(I64.ucmp64(ah, al, bh, bl)), a < b ? -1 : a > b ? 1 : 0);
      assert.equal(Math.sign(I64.scmp64(ah, al, bh, bl)), sa < sb ? -1 : sa > sb ? 1 : 0);
      // Small divisors exercise the long-division path with a high dividend.
      const small = BigInt(bl >>> 0) || 1n;
      assert.equal(got(I64.udiv64(ah, al, 0, Number(small) | 0)), a / small);
    }),
    { numRuns: 3000 },
  );
});

test('the JIT builds one function per distinct program and reuses it', async () => {
  const { compiledCount } = await import('../../src/vm/jit.js');
  const gen = fc.sample(randomProgram(10), { numRuns: 1, seed: 42 })[0]!;
  new Vm(gen.insns, { programType: 'xdp' });
  const before = compiledCount();
  for (let i = 0; i < 5; i++) new Vm(gen.insns, { programType: 'xdp' }).run(pkt);
  assert.equal(compiledCount(), before);
});
