/**
 * The reproducers of issue 22 through the real command line: each refused input prints one
 * `netmangle: …` line (a rule error adds its source line and caret, a hint one more line),
 * exits 2, and prints no stack and no "internal error". The ELF fixtures of the fuzzer go
 * through `replay OBJECT` the same way (exit 1: the object, not the command line, is wrong).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../../../', import.meta.url));

function netmangle(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [join(repo, 'bin', 'netmangle'), ...args], { encoding: 'utf8', maxBuffer: 1 << 20, timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

function assertOneRefusal(args: string[], exitCode: number): string {
  const { status, stderr } = netmangle(args);
  assert.equal(status, exitCode, stderr.slice(0, 300));
  assert.match(stderr, /^netmangle: /);
  assert.doesNotMatch(stderr, /internal error|\n\s+at /);
  const lines = stderr.trimEnd().split('\n');
  assert.ok(lines.length <= 4, `${lines.length} lines:\n${stderr.slice(0, 500)}`);
  assert.ok(stderr.length < 1000, `${stderr.length} bytes of message`);
  return lines[0]!;
}

test('rule reproducers: deep parentheses, long or chains, many nots, a huge unknown name', () => {
  const out = join(tmpdir(), `netmangle-hardening-${process.pid}.o`);
  const rules = [
    `${'('.repeat(3000)}ip${')'.repeat(3000)} => drop`,
    `${Array.from({ length: 800 }, () => 'ip').join(' or ')} => drop`,
    `${'not '.repeat(3000)}ip => drop`,
    `${'x'.repeat(100_000)} == 1 => drop`,
  ];
  for (const rule of rules) assert.match(assertOneRefusal(['build', '--hook', 'xdp', '-o', out, rule], 2), /more than the limit of/);
  rmSync(out, { force: true });
});

test('rules-file reproducers: /dev/zero, a 1 MB name, YAML aliases', () => {
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-hardening-'));
  try {
    const out = join(dir, 'o.o');
    assert.match(assertOneRefusal(['build', '-o', out, '/dev/zero'], 2), /more than the limit of 1048576 bytes/);
    const name = join(dir, 'name.yaml');
    writeFileSync(name, `dev: veth0\nhook: xdp\nrules:\n  - match: ${'a'.repeat(1 << 20)} == 1\n    action: drop\n`);
    assert.match(assertOneRefusal(['build', '-o', out, name], 2), /more than the limit of 1048576/);
    const aliases = join(dir, 'aliases.yaml');
    let y = 'a: &a [x, x, x, x, x, x, x, x, x, x]\n';
    for (const c of 'bcdefgh') y += `${c}: &${c} [${Array(10).fill(`*${String.fromCharCode(c.charCodeAt(0) - 1)}`).join(', ')}]\n`;
    writeFileSync(aliases, `${y}rules: [{dev: veth0, hook: xdp, rule: "ip => drop"}]\n`);
    assert.match(assertOneRefusal(['build', '-o', out, aliases], 2), /aliases expand to more than the limit/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('malformed objects (the ELF fuzzer fixtures) are refused by replay in one line', () => {
  const fixtures = join(repo, 'test/fixtures/fuzz/elf');
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-hardening-'));
  try {
    const capture = join(dir, 'in.pcap');
    // An empty pcap (the global header alone): the object is read before any packet.
    const header = Buffer.alloc(24);
    header.writeUInt32LE(0xa1b2c3d4, 0);
    header.writeUInt16LE(2, 4);
    header.writeUInt16LE(4, 6);
    header.writeUInt32LE(65535, 16);
    header.writeUInt32LE(1, 20);
    writeFileSync(capture, header);
    const files = readdirSync(fixtures).filter((f) => f.endsWith('.o'));
    assert.ok(files.length > 0);
    for (const f of files) assert.match(assertOneRefusal(['replay', join(fixtures, f), capture, '-o', join(dir, 'out.pcap')], 1), /is not a BPF object file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
