/**
 * The disassembler against llvm-objdump's own output, stored in test/fixtures/bpf/ by
 * scripts/golden/make-bpf-golden.sh (the tests need no LLVM). Each fixture object is checked
 * in four objdump variants, through both the byte path and the decoded-instruction path, and
 * the well-formed ones must survive decode → encode unchanged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { decode, encode, disassemble, formatInsn, formatListing, LD_IMM64, type Insn, type ListingOptions } from '../../src/bpf/index.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/bpf/', import.meta.url));

/** The objdump flags of each golden file, as our options. All but raw-v4 were dumped with -z. */
const VARIANTS: Record<string, ListingOptions> = {
  'hex-v4': { hex: true, alu32: true, rawBytes: false, skipZeroes: false },
  'dec-v4': { hex: false, alu32: true, rawBytes: false, skipZeroes: false },
  'raw-v4': { hex: true, alu32: true, rawBytes: true },
  'hex-v1': { hex: true, alu32: false, rawBytes: false, skipZeroes: false },
};

function readLines(file: string): string[] {
  const text = readFileSync(join(FIXTURES, file), 'utf8');
  const lines = text.split('\n');
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

function readSymbols(name: string): Map<string, number> {
  const symbols = new Map<string, number>();
  for (const line of readLines(`${name}.syms`)) {
    const [slot, sym] = line.split(' ');
    symbols.set(sym!, Number(slot));
  }
  return symbols;
}

/** Equal line lists, reporting the first difference with its line number. */
function assertSameLines(actual: string[], expected: string[], what: string): void {
  const n = Math.max(actual.length, expected.length);
  for (let i = 0; i < n; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(`${what}, line ${i + 1}:\n  expected: ${JSON.stringify(expected[i])}\n  actual:   ${JSON.stringify(actual[i])}`);
    }
  }
}

const names = readdirSync(FIXTURES).filter((f) => f.endsWith('.bin')).map((f) => f.slice(0, -4)).sort();

test('the golden fixtures are present', () => {
  for (const required of ['alu', 'jmp', 'mem', 'prog', 'fuzz']) assert.ok(names.includes(required), `missing ${required}.bin`);
});

/**
 * What distinguishes one instruction form from another of the same opcode: the offset of ALU
 * ops (sdiv/smod, movsx widths), the width of byte swaps, the operation of atomics, and
 * whether a 64-bit load is a plain constant or a pseudo.
 */
function formOf(i: Insn): string {
  const cls = i.code & 0x07;
  const op = i.code & 0xf0;
  if ((cls === 0x04 || cls === 0x07) && op === 0xd0) return `${i.code}/width${i.imm}`;
  if ((cls === 0x04 || cls === 0x07) && op !== 0x80) return `${i.code}/off${i.off}`;
  if (cls === 0x03 && (i.code & 0xe0) === 0xc0) return `${i.code}/op${i.imm & 0xff}`;
  if (i.code === LD_IMM64) return `${i.code}/${i.src === 0 ? 'const' : 'pseudo'}`;
  return String(i.code);
}

test('the hand-written fixtures cover every instruction form llvm-objdump knows', () => {
  const known = new Set<string>();
  for (let code = 0; code < 256; code++) {
    for (const off of [0, 1, 8, 16, 32]) {
      for (const imm of [0, 1, 16, 32, 64, 0x40, 0x41, 0x50, 0x51, 0xa0, 0xa1, 0xe1, 0xf1]) {
        for (const src of code === LD_IMM64 ? [0, 1] : [2]) {
          const insn: Insn = code === LD_IMM64 ? { code, dst: 1, src, off, imm, imm2: 0 } : { code, dst: 1, src, off, imm };
          if (formatInsn(insn, { alu32: true }) !== '<unknown>') known.add(formOf(insn));
        }
      }
    }
  }
  const seen = new Set<string>();
  for (const name of names.filter((n) => n !== 'fuzz')) {
    for (const insn of decode(new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`))))) seen.add(formOf(insn));
  }
  assert.ok(known.size > 150, `only ${known.size} forms found; the enumeration is broken`);
  assert.deepEqual([...known].filter((f) => !seen.has(f)), []);
});

for (const name of names) {
  const bytes = new Uint8Array(readFileSync(join(FIXTURES, `${name}.bin`)));
  const symbols = readSymbols(name);
  const wellFormed = name !== 'fuzz';

  for (const [variant, options] of Object.entries(VARIANTS)) {
    test(`${name}: listing matches llvm-objdump (${variant})`, () => {
      const expected = readLines(`${name}.${variant}.txt`);
      assertSameLines(formatListing(bytes, { ...options, symbols, headers: true }), expected, `${name}.${variant}.txt`);
    });

    if (options.skipZeroes !== false) continue;
    test(`${name}: instruction text matches llvm-objdump (${variant})`, () => {
      const expected = readLines(`${name}.${variant}.txt`)
        .map((l) => /^ *\d+:\t(?:[0-9a-f]{2}(?: [0-9a-f]{2})*\t)?(.*)$/.exec(l)?.[1])
        .filter((l): l is string => l !== undefined);
      const opts = { hex: options.hex, alu32: options.alu32, symbols };
      assertSameLines(disassemble(bytes, opts), expected, `${name}.${variant}.txt via bytes`);
      if (wellFormed) assertSameLines(disassemble(decode(bytes), opts), expected, `${name}.${variant}.txt via decode()`);
    });
  }

  if (wellFormed) {
    test(`${name}: encode(decode(bytes)) gives back the bytes`, () => {
      assert.deepEqual(encode(decode(bytes)), bytes);
    });
  }
}
