/**
 * Inputs that once cost netmangle its stack, seconds of CPU or gigabytes of memory (issue 22):
 * each is refused with one UsageError naming the limit and the value, before the work starts.
 * The inputs are built at the size that broke netmangle, and timed only loosely (a refusal
 * must not do the work it guards against; timings are never asserted more closely than that).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../../src/errors.js';
import { loadRulesFile, loadRulesText, parseRuleLine } from '../../src/rules/load.js';

function refused(work: () => unknown): UsageError {
  let caught: unknown;
  try {
    work();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof UsageError, `expected a UsageError, got ${caught instanceof Error ? `${caught.constructor.name}: ${caught.message.slice(0, 200)}` : String(caught)}`);
  assert.equal(caught.exitCode, 2);
  return caught;
}

const line = (text: string) => () => parseRuleLine(text, { dev: 'veth0', hook: 'egress' });
const firstLine = (err: Error): string => err.message.split('\n')[0]!;

test('3,000 nested parentheses: refused at the nesting limit, not a stack overflow', () => {
  const err = refused(line(`${'('.repeat(3000)}ip${')'.repeat(3000)} => drop`));
  assert.match(firstLine(err), /^the rule has 33 levels of nesting, more than the limit of 32/);
});

test('nesting in expressions and calls counts too; 32 levels are accepted', () => {
  assert.match(firstLine(refused(line(`${'('.repeat(40)}ip.ttl${')'.repeat(40)} == 1 => drop`))), /levels of nesting, more than the limit of 32/);
  assert.match(firstLine(refused(line(`ip.ttl == ${'min(1, '.repeat(40)}1${')'.repeat(40)} => drop`))), /levels of nesting, more than the limit of 32/);
  assert.doesNotThrow(line(`${'('.repeat(31)}ip${')'.repeat(31)} => drop`));
  assert.doesNotThrow(line(`${'not '.repeat(32)}ip => drop`));
});

test('10,000 nots: refused at the nesting limit', () => {
  const err = refused(line(`${'not '.repeat(10000)}ip => drop`));
  assert.match(firstLine(err), /more than the limit of 16384|levels of nesting/);
  assert.match(firstLine(refused(line(`${'!'.repeat(10000)}ip => drop`))), /^the rule has 33 levels of nesting/);
});

test('a 5,000-term or chain: refused at the operator limit (or the length limit)', () => {
  const terms = (n: number, t: string): string => Array.from({ length: n }, () => t).join(' or ');
  assert.match(firstLine(refused(line(`${terms(5000, 'tcp.port == 80')} => drop`))), /^the rule has 90004 characters, more than the limit of 16384/);
  assert.match(firstLine(refused(line(`${terms(1000, 'ip')} => drop`))), /^the rule has 257 operators, more than the limit of 256/);
  assert.match(firstLine(refused(line(`ip.ttl${' + 1'.repeat(300)} == 1 => drop`))), /^the rule has 257 operators/);
  assert.equal(line(`${terms(257, 'tcp')} => drop`)().groups[0]!.rules.length, 1);
});

test('set members: 1,024 accepted, 1,025 refused', () => {
  const set = (n: number): string => `tcp.dstport in {${Array.from({ length: n }, (_, i) => i).join(', ')}} => drop`;
  assert.doesNotThrow(line(set(1024)));
  assert.match(firstLine(refused(line(set(1025)))), /^the set has 1025 members, more than the limit of 1024/);
});

test('a 100 KB unknown field name: refused at once with a short message, no "did you mean" over it', () => {
  const t0 = performance.now();
  const err = refused(line(`${'x'.repeat(10_000)} == 1 => drop`));
  assert.ok(performance.now() - t0 < 2000, 'the refusal must not compare the name with every field');
  assert.equal(firstLine(err), 'a name has 10000 characters, more than the limit of 64 (docs/limits.md)');
  assert.ok(err.message.length < 400, `message of ${err.message.length} characters`);
  const big = refused(line(`${'x'.repeat(100_000)} == 1 => drop`));
  assert.equal(firstLine(big), 'the rule has 100013 characters, more than the limit of 16384 (docs/limits.md)');
});

test('long literals and addresses are echoed cut short', () => {
  for (const text of [`ip.ttl == ${'9'.repeat(5000)} => drop`, `ip.ttl == 0x${'f'.repeat(5000)} => drop`, `ipv6.src == ${'1:'.repeat(3000)}1 => drop`, `ip.ttl == 0${'7'.repeat(5000)} => drop`]) {
    const err = refused(line(text));
    assert.ok(err.message.length < 600, `${err.message.length} characters for ${text.slice(0, 30)}`);
  }
});

test('a rules file: a 1 MB name is refused quickly and briefly', () => {
  const yaml = `dev: veth0\nhook: xdp\nrules:\n  - match: ${'a'.repeat(1 << 19)} == 1\n    action: drop\n`;
  const t0 = performance.now();
  const err = refused(() => loadRulesText(yaml, 'rules.yaml'));
  assert.ok(performance.now() - t0 < 5000);
  assert.match(firstLine(err), /^rules\.yaml:4: rules\[0\]: the rule has 524\d\d\d characters, more than the limit of 16384/);
  const name = refused(() => loadRulesText(`dev: veth0\nhook: xdp\nrules:\n  - name: ${'n'.repeat(100_000)}\n    action: drop\n`, 'rules.yaml'));
  assert.equal(firstLine(name), 'rules.yaml:4: rules[0].name: the name has 100000 characters, more than the limit of 64 (docs/limits.md)');
  const key = refused(() => loadRulesText(`dev: veth0\nhook: xdp\nrules:\n  - {action: drop, ${'k'.repeat(100_000)}: 1}\n`, 'rules.yaml'));
  assert.ok(key.message.length < 600, `${key.message.length} characters`);
});

test('YAML aliases: too many, or expanding too far, are refused as a usage error', () => {
  let exp = 'a: &a [x, x, x, x, x, x, x, x, x, x]\n';
  for (let i = 0; i < 8; i++) exp += `${'bcdefghij'[i]}: &${'bcdefghij'[i]} [${Array(10).fill(`*${'abcdefghij'[i]}`).join(', ')}]\n`;
  exp += 'rules: [{dev: veth0, hook: xdp, rule: "ip => drop"}]\n';
  assert.match(firstLine(refused(() => loadRulesText(exp, 'rules.yaml'))), /^rules\.yaml: its aliases expand to more than the limit of 1000 nodes/);
  const many = `x: &x 1\nl: [${Array(150).fill('*x').join(', ')}]\nrules: [{dev: veth0, hook: xdp, rule: "ip => drop"}]\n`;
  assert.match(firstLine(refused(() => loadRulesText(many, 'rules.yaml'))), /^rules\.yaml:2: the file has 150 aliases, more than the limit of 100/);
  // A few aliases, as a file may use to share settings, are fine.
  const few = 'x: &set {ip.ttl: 1}\nrules:\n  - {dev: veth0, hook: xdp, set: *set}\n  - {dev: veth0, hook: egress, set: *set}\n';
  assert.throws(() => loadRulesText(few, 'rules.yaml'), /unknown key "x"/);
});

test('YAML nested deep enough to exhaust the stack is a usage error', () => {
  const err = refused(() => loadRulesText(`${'['.repeat(100_000)}${']'.repeat(100_000)}`, 'rules.yaml'));
  assert.equal(firstLine(err), 'rules.yaml: the YAML is nested too deeply to read');
});

test('rules per file: 4,097 refused before any is checked', () => {
  const yaml = `dev: veth0\nhook: xdp\nrules:\n${'  - action: drop\n'.repeat(4097)}`;
  assert.equal(firstLine(refused(() => loadRulesText(yaml, 'rules.yaml'))), 'rules.yaml:4: rules: has 4097 rules, more than the limit of 4096 (docs/limits.md)');
});

test('rules files: size capped however the file behaves (/dev/zero, a big file, a directory)', () => {
  const t0 = performance.now();
  const zero = refused(() => loadRulesFile('/dev/zero'));
  assert.ok(performance.now() - t0 < 5000);
  assert.equal(firstLine(zero), 'rules file /dev/zero has more than the limit of 1048576 bytes (docs/limits.md)');
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-limits-'));
  try {
    const big = join(dir, 'big.yaml');
    writeFileSync(big, `# ${'x'.repeat(2 << 20)}\n`);
    assert.equal(firstLine(refused(() => loadRulesFile(big))), `rules file ${big} has ${(2 << 20) + 3} bytes, more than the limit of 1048576 (docs/limits.md)`);
    assert.equal(firstLine(refused(() => loadRulesFile(dir))), `cannot read rules file ${dir}: it is a directory`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('durations of a rule: at most a year, said with the limit', () => {
  const err = refused(() => parseRuleLine('ip => drop', { dev: 'veth0', hook: 'egress', for: '9000h' }));
  assert.equal(firstLine(err), '--for "9000h" is longer than the limit of 365 days (8760h; docs/limits.md)');
  assert.equal(parseRuleLine('ip => drop', { dev: 'veth0', hook: 'egress', for: '8760h' }).groups[0]!.rules[0]!.forNs, 8760 * 3600e9);
});

test('YAML syntax errors quote the offending text cut short', () => {
  for (const yaml of [`dev: veth0\nhook: xdp\nrules:\n  - rule: a\n  ${' + 1'.repeat(3000)}\n`, `rules:\n  - !${'!'.repeat(3000)} x\n`, `rules:\n  - match: |1${'..1'.repeat(1000)}\n      ip\n`]) {
    const err = refused(() => loadRulesText(yaml, 'rules.yaml'));
    assert.ok(err.message.length < 400, `${err.message.length} characters: ${err.message.slice(0, 100)}`);
  }
});

test('a mapping used as a key is refused without a Node warning on stderr', async () => {
  const warnings: string[] = [];
  const listen = (w: Error): void => {
    warnings.push(w.message);
  };
  process.on('warning', listen);
  try {
    const err = refused(() => loadRulesText('? [{rule: "ip => drop"}]\n: 1\nrules: [{dev: veth0, hook: xdp, rule: "ip => drop"}]\n', 'rules.yaml'));
    assert.match(firstLine(err), /unknown key/);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', listen);
  }
});

test('a schema error under a long key names the key cut short', () => {
  const err = refused(() => loadRulesText(`dev: veth0\nhook: egress\nrules:\n  - {match: tcp, set: {${'i'.repeat(3000)}: [1]}}\n`, 'rules.yaml'));
  assert.ok(err.message.length < 400, `${err.message.length} characters: ${err.message.slice(0, 100)}`);
  assert.match(firstLine(err), /^rules\.yaml:4: rules\[0\]\.set\.i+… \(3000 characters\): must be/);
});
