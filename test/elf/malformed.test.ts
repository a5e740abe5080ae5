/**
 * Malformed objects: each is refused with one NetmangleError that says which section is wrong
 * and how, never a TypeError from reading past a table, and never a misleading later check
 * ("no license section" for a broken section-name table).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildObjectFromGroups } from '../../src/elf/build.js';
import { readElf } from '../../src/elf/elf.js';
import { parseObject } from '../../src/elf/object.js';
import { NetmangleError } from '../../src/errors.js';
import { parseRuleLine } from '../../src/rules/load.js';

const built = (): Uint8Array => Uint8Array.from(buildObjectFromGroups(parseRuleLine('icmp.type == 8 => drop', { dev: 'veth0', hook: 'xdp' }).groups, 1).bytes);

/** Byte offset of section `index`'s header. */
function shdr(bytes: Uint8Array, index: number): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  return Number(v.getBigUint64(40, true)) + index * 64;
}

function refusal(bytes: Uint8Array): string {
  let caught: unknown;
  try {
    const o = parseObject(bytes, 'bad.o');
    for (const p of o.programs) o.link(p.name);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof NetmangleError, `expected a NetmangleError, got ${caught instanceof Error ? `${caught.constructor.name}: ${caught.message}` : String(caught)}`);
  assert.ok(!caught.message.includes('\n'), 'one line');
  return caught.message;
}

test('a program section whose size is not a multiple of 8', () => {
  const bytes = built();
  const xdp = readElf(bytes).section('xdp')!;
  const v = new DataView(bytes.buffer);
  v.setBigUint64(shdr(bytes, xdp.index) + 32, BigInt(xdp.size - 4), true);
  assert.equal(refusal(bytes), `bad.o is not a BPF object file: section ${xdp.index} (xdp) is ${xdp.size - 4} bytes, not a whole number of instructions, 8 bytes each`);
});

test('a symbol table whose size is not a multiple of 24', () => {
  const bytes = built();
  const symtab = readElf(bytes).section('.symtab')!;
  new DataView(bytes.buffer).setBigUint64(shdr(bytes, symtab.index) + 32, BigInt(symtab.size - 5), true);
  assert.match(refusal(bytes), new RegExp(`section ${symtab.index} \\(\\.symtab\\) is ${symtab.size - 5} bytes, not a whole number of entries of 24 bytes`));
});

test('a relocation against a symbol the symbol table does not have', () => {
  const bytes = built();
  const elf = readElf(bytes);
  const rel = elf.section('.relxdp')!;
  new DataView(bytes.buffer).setUint32(rel.offset + 12, 9999, true); // r_info's symbol half
  assert.equal(refusal(bytes), `bad.o is not a BPF object file: relocation 0 of section ${rel.index} (.relxdp) refers to symbol 9999, but the symbol table has ${elf.symbols.length}`);
});

test('a bad e_shstrndx is named as such, not reported as a missing license', () => {
  for (const index of [0xfff0, 1]) {
    const bytes = built();
    new DataView(bytes.buffer).setUint16(62, index, true);
    const msg = refusal(bytes);
    assert.match(msg, new RegExp(`^bad\\.o is not a BPF object file: e_shstrndx is ${index}`));
    assert.doesNotMatch(msg, /license/);
  }
});

test('a section-name table of type NOBITS sized past the end of the file (it once hung the reader)', () => {
  const bytes = built();
  const v = new DataView(bytes.buffer);
  const shstrndx = v.getUint16(62, true);
  v.setUint32(shdr(bytes, shstrndx) + 4, 8, true); // SHT_NOBITS: its size is not checked against the file
  v.setBigUint64(shdr(bytes, shstrndx) + 32, 1n << 40n, true);
  assert.equal(refusal(bytes), `bad.o is not a BPF object file: e_shstrndx is ${shstrndx}, a section of type 8, not the string table of section names`);
});
