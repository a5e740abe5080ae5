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
import { decode, encode, disassemble, formatListing, type ListingOptions } from '../../src/bpf/index.js';

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
