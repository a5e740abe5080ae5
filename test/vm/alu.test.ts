/**
 * Every ALU operation, 32- and 64-bit, register and immediate forms, on both engines, against
 * the BigInt model of the kernel's semantics: division and modulo by zero, INT_MIN / -1,
 * shift counts masked, byte swaps, sign-extending moves and loads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Assembler, imm, type AluOp } from '../../src/bpf/asm.js';
import { R0, R1, R2, R3, R6, R7 } from '../../src/bpf/opcodes.js';
import { Vm, type Engine } from '../../src/vm/vm.js';
import { ALU_NAMES, EDGE_VALUES, M32, M64, outMap, refAlu, runAsm, s64 } from './support.js';

const ENGINES: Engine[] = ['interpreter', 'jit'];

/** A program that loads two u64 operands from the packet, applies `body`, and stores r1 to out[0]. */
function operandProgram(body: (a: Assembler) => void): { vm: (engine: Engine) => { run: (a: bigint, b: bigint) => bigint } } {
  const a = new Assembler();
  a.ldx(4, R6, R1, 0).ldx(4, R7, R1, 4).mov64(R3, R6).alu64('add', R3, imm(16)).jmp('jgt', R3, R7, 'short');
  a.ldx(8, R1, R6, 0).ldx(8, R2, R6, 8);
  body(a);
  a.ldMapValue(R3, 'out').stx(8, R3, 0, R1).movImm(R0, 0).exit();
  a.label('short').movImm(R0, 1).exit();
  const { insns, mapRefs } = a.assemble();
  return {
    vm: (engine) => {
      const out = outMap(1);
      const vm = new Vm(insns, { programType: 'xdp', engine, maps: { out }, mapRefs });
      const pkt = new Uint8Array(64);
      const view = new DataView(pkt.buffer);
      return {
        run: (x, y) => {
          view.setBigUint64(0, x, true);
          view.setBigUint64(8, y, true);
          assert.equal(vm.run(pkt).retval, 0);
          return new DataView(out.lookup(0)!.buffer).getBigUint64(0, true);
        },
      };
    },
  };
}

for (const is64 of [true, false]) {
  for (const op of ALU_NAMES) {
    test(`${is64 ? 'alu64' : 'alu32'} ${op}, register operand: edge values on both engines match the kernel's definition`, () => {
      const prog = operandProgram((a) => (is64 ? a.alu64(op as AluOp, R1, R2) : a.alu32(op as AluOp, R1, R2)));
      for (const engine of ENGINES) {
        const vm = prog.vm(engine);
        for (const x of EDGE_VALUES) {
          for (const y of EDGE_VALUES) {
            const want = refAlu(op, is64, x, y);
            assert.equal(vm.run(x, y), want, `${engine}: 0x${x.toString(16)} ${op} 0x${y.toString(16)}`);
          }
        }
      }
    });

    test(`${is64 ? 'alu64' : 'alu32'} ${op}, immediate operand (sign-extended to 64 bits)`, () => {
      const imms = [0, 1, -1, 2, 7, 31, 32, 63, 0x7fffffff, -0x80000000, 0x1234, -5];
      for (const k of imms) {
        const isShift = op === 'lsh' || op === 'rsh' || op === 'arsh';
        if ((op === 'div' || op === 'sdiv' || op === 'mod' || op === 'smod') && k === 0) continue; // the verifier refuses a constant zero divisor
        if (isShift && (k < 0 || k >= (is64 ? 64 : 32))) continue; // and constant shifts beyond the width
        const prog = operandProgram((a) => (is64 ? a.alu64(op as AluOp, R1, imm(k)) : a.alu32(op as AluOp, R1, imm(k))));
        const src = BigInt.asUintN(64, BigInt(k));
        for (const engine of ENGINES) {
          const vm = prog.vm(engine);
          for (const x of EDGE_VALUES) assert.equal(vm.run(x, 0n), refAlu(op, is64, x, src), `${engine}: 0x${x.toString(16)} ${op} ${k}`);
        }
      }
    });
  }
}

test('division and modulo by a zero register follow the kernel: x/0 = 0, x%0 = x (32-bit: x zero-extended)', () => {
  const x = 0xdeadbeefcafef00dn;
  for (const engine of ENGINES) {
    const run = (body: (a: Assembler) => void): bigint => operandProgram(body).vm(engine).run(x, 0n);
    assert.equal(run((a) => a.alu64('div', R1, R2)), 0n);
    assert.equal(run((a) => a.alu64('sdiv', R1, R2)), 0n);
    assert.equal(run((a) => a.alu64('mod', R1, R2)), x);
    assert.equal(run((a) => a.alu64('smod', R1, R2)), x);
    assert.equal(run((a) => a.alu32('div', R1, R2)), 0n);
    assert.equal(run((a) => a.alu32('mod', R1, R2)), x & M32);
    assert.equal(run((a) => a.alu32('smod', R1, R2)), x & M32);
  }
});

test('INT_MIN / -1 is INT_MIN and INT_MIN % -1 is 0, in 64 and 32 bits', () => {
  for (const engine of ENGINES) {
    const min64 = 0x8000000000000000n;
    const neg1 = M64;
    assert.equal(operandProgram((a) => a.alu64('sdiv', R1, R2)).vm(engine).run(min64, neg1), min64);
    assert.equal(operandProgram((a) => a.alu64('smod', R1, R2)).vm(engine).run(min64, neg1), 0n);
    assert.equal(operandProgram((a) => a.alu32('sdiv', R1, R2)).vm(engine).run(0xffffffff80000000n, neg1), 0x80000000n);
    assert.equal(operandProgram((a) => a.alu32('smod', R1, R2)).vm(engine).run(0x80000000n, neg1), 0n);
  }
});

test('shift counts from a register are masked to the width (64: & 63, 32: & 31)', () => {
  for (const engine of ENGINES) {
    assert.equal(operandProgram((a) => a.alu64('lsh', R1, R2)).vm(engine).run(1n, 65n), 2n);
    assert.equal(operandProgram((a) => a.alu64('rsh', R1, R2)).vm(engine).run(0x8000000000000000n, 127n), 1n);
    assert.equal(operandProgram((a) => a.alu32('lsh', R1, R2)).vm(engine).run(1n, 33n), 2n);
    assert.equal(operandProgram((a) => a.alu32('arsh', R1, R2)).vm(engine).run(0x80000000n, 63n), 0xffffffffn);
  }
});

test('32-bit results are zero-extended into the 64-bit register', () => {
  for (const engine of ENGINES) {
    assert.equal(operandProgram((a) => a.alu32('add', R1, R2)).vm(engine).run(0xffffffffffffffffn, 1n), 0n);
    assert.equal(operandProgram((a) => a.mov32(R1, R2)).vm(engine).run(0n, 0xffffffffffffffffn), 0xffffffffn);
    assert.equal(operandProgram((a) => a.neg32(R1)).vm(engine).run(1n, 0n), 0xffffffffn);
    assert.equal(operandProgram((a) => a.neg64(R1)).vm(engine).run(1n, 0n), M64);
  }
});

test('byte swaps: be16/32/64 swap and truncate, le16/32 truncate, le64 keeps, bswap always swaps', () => {
  const x = 0x0123456789abcdefn;
  const cases: [string, (a: Assembler) => void, bigint][] = [
    ['be16', (a) => a.be(R1, 16), 0xefcdn],
    ['be32', (a) => a.be(R1, 32), 0xefcdab89n],
    ['be64', (a) => a.be(R1, 64), 0xefcdab8967452301n],
    ['le16', (a) => a.le(R1, 16), 0xcdefn],
    ['le32', (a) => a.le(R1, 32), 0x89abcdefn],
    ['le64', (a) => a.le(R1, 64), x],
    ['bswap16', (a) => a.bswap(R1, 16), 0xefcdn],
    ['bswap32', (a) => a.bswap(R1, 32), 0xefcdab89n],
    ['bswap64', (a) => a.bswap(R1, 64), 0xefcdab8967452301n],
  ];
  for (const engine of ENGINES) {
    for (const [name, body, want] of cases) assert.equal(operandProgram(body).vm(engine).run(x, 0n), want, `${engine} ${name}`);
  }
});

test('sign-extending moves: movsx 8/16/32 into 64 bits, 8/16 into 32 bits zero-extended', () => {
  const x = 0x1122334455f6a780n;
  for (const engine of ENGINES) {
    const run = (body: (a: Assembler) => void): bigint => operandProgram(body).vm(engine).run(0n, x);
    assert.equal(run((a) => a.movsx64(R1, R2, 8)), M64 - 0x7fn); // 0x80 -> -128
    assert.equal(run((a) => a.movsx64(R1, R2, 16)), BigInt.asUintN(64, -0x5880n)); // 0xa780
    assert.equal(run((a) => a.movsx64(R1, R2, 32)), BigInt.asUintN(64, s64(0x55f6a780n))); // positive
    assert.equal(run((a) => a.raw({ code: 0x04 | 0xb0 | 0x08, dst: R1, src: R2, off: 16, imm: 0 })), 0xffffa780n);
  }
});

test('sign-extending loads (ldxsx) of 1, 2 and 4 bytes, and plain loads zero-extend', () => {
  const words = [0x80n, 0x8001n, 0x80000001n];
  for (const [i, size] of ([1, 2, 4] as const).entries()) {
    for (const signed of [true, false]) {
      const r = runAsm((a) => {
        a.ldx(4, R6, R1, 0).ldx(4, R7, R1, 4).mov64(R3, R6).alu64('add', R3, imm(8)).jmp('jgt', R3, R7, 'x');
        if (signed) a.ldxsx(size, R1, R6, 0);
        else a.ldx(size, R1, R6, 0);
        a.ldMapValue(R3, 'out').stx(8, R3, 0, R1).label('x').movImm(R0, 0).exit();
      }, { programType: 'xdp', makeMaps: () => ({ out: outMap(1) }) }, (() => {
        const p = new Uint8Array(32);
        new DataView(p.buffer).setBigUint64(0, words[i]!, true);
        return p;
      })());
      const bits = BigInt(size * 8);
      const want = signed ? BigInt.asUintN(64, BigInt.asIntN(Number(bits), words[i]!)) : words[i]!;
      assert.equal(r.out[0], want, `${signed ? 's' : 'u'}${size * 8}`);
    }
  }
});

test('64-bit immediate loads and r0 return: the retval is r0\'s low 32 bits, unsigned', () => {
  const r = runAsm((a) => a.ldImm64(R0, 0xaaaaaaaa_bbbbbbbbn).exit());
  assert.equal(r.retval, 0xbbbbbbbb);
});
