/**
 * The limits of one program, refused before the kernel sees it or kept out of the way: at
 * most MAX_RULES rules (their counters fill the largest per-CPU value the kernel allocates),
 * said in one line with exit 2 (never an internal error); jumps kept within 16 bits in long
 * programs (a `pass` among rules whose packets may follow held ones).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CompileError, compileGroup, delayedMark, MAX_RULES } from '../../src/compiler/index.js';
import { loadCompiled } from '../../src/live/index.js';
import { lookupField } from '../../src/rules/catalog.js';
import { kernelTest } from '../helpers/kernel.js';
import { compileRules, rule } from './harness.js';

const NETMANGLE = fileURLToPath(new URL('../../../bin/netmangle', import.meta.url));

const dropRules = (n: number) => Array.from({ length: n }, (_, i) => rule(`tcp.dstport == ${(i % 60000) + 1} => drop`, 'egress', { name: `r${i}` }));

test(`${MAX_RULES} rules compile; one more is refused with the limit and what to do, exit 2`, () => {
  assert.equal(MAX_RULES, 1364);
  assert.ok(compileRules('egress', dropRules(MAX_RULES)).insns.length > 32768);
  assert.throws(() => compileRules('egress', dropRules(MAX_RULES + 1)), (err: unknown) => {
    assert.ok(err instanceof CompileError);
    assert.equal(err.exitCode, 2);
    assert.equal(err.message, '1365 rules at egress of x: one program holds at most 1364 rules (their counters fill the largest per-CPU map value the kernel allows, 32 KB)');
    assert.match(err.hint ?? '', /split the rules .* FIELD in \{…\}/);
    return true;
  });
});

test('netmangle build of a rules file with 1366 rules: one line naming the limit, exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-limits-'));
  try {
    const file = join(dir, 'many.yaml');
    writeFileSync(file, `dev: veth0\nhook: egress\nrules:\n${Array.from({ length: 1366 }, (_, i) => `  - rule: "tcp.dstport == ${i + 1} => drop"\n`).join('')}`);
    const r = spawnSync(NETMANGLE, ['build', file, '-o', join(dir, 'many.o')], { encoding: 'utf8' });
    assert.equal(r.status, 2, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines[0], 'netmangle: 1366 rules at egress of veth0: one program holds at most 1364 rules (their counters fill the largest per-CPU map value the kernel allows, 32 KB)');
    assert.equal(lines.length, 2, r.stderr);
    assert.doesNotMatch(r.stderr, /internal error|does not fit/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A `pass` first, 1200 rules after it, a reorder last: the pass verdict is far from the first rule. */
function passFarFromEnd() {
  const rules = [rule('udp.dstport == 7 => pass', 'egress', { name: 'pass' }), ...dropRules(1200), rule('udp => reorder', 'egress', { name: 'reorder' })];
  return compileGroup({ dev: 'x', hook: 'egress', rules }, { seed: 1, lookupField, hold: { rule: new Map([[rules.length - 1, 1]]), follower: 1, mark: delayedMark(3) } });
}

test('a pass rule more than 32K instructions before the end assembles (its verdict block is placed within reach)', () => {
  const c = passFarFromEnd();
  assert.ok(c.insns.length > 36000, `${c.insns.length} instructions`);
  const islands = [...(c.labels ?? new Map()).keys()].filter((l) => l.startsWith('verdict_pass'));
  assert.ok(islands.length >= 1, 'a pass block');
  const passAt = c.labels!.get('rule1')!;
  assert.ok(c.labels!.get(islands[0]!)! - passAt < 32768, 'the first pass block is within a jump of the pass rule');
});

kernelTest('that program loads in the verifier', () => {
  loadCompiled(passFarFromEnd()).close();
}, { timeout: 120_000 });

test('an expression with more values pending than registers: one line, exit 2 (a rule the user can change)', () => {
  const nested = Array.from({ length: 7 }, () => 'min(ip.ttl, ').join('') + '1' + ')'.repeat(7);
  assert.throws(() => compileRules('egress', [rule(`ip => set ip.ttl = ${nested}`, 'egress', { name: 'deep' })]), (err: unknown) => {
    assert.ok(err instanceof CompileError);
    assert.equal(err.exitCode, 2);
    assert.match(err.message, /^rule "deep": expression too deeply nested \(more than 6 values pending at once\)$/);
    return true;
  });
});
