// `--probability 5%`, as docs/rules.md shows it, is taken by every command that takes --probability.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const netmangle = (...args: string[]) => spawnSync(process.execPath, [join(repo, 'bin', 'netmangle'), ...args], { encoding: 'utf8' });

test('build --probability 5% compiles the rule with p = 0.05; 150% and "often" are refused with exit 2', () => {
  const pct = netmangle('build', 'tcp => drop', '--hook', 'xdp', '--probability', '5%', '--emit', 'asm', '--seed', '1');
  assert.equal(pct.status, 0, pct.stderr);
  const dec = netmangle('build', 'tcp => drop', '--hook', 'xdp', '--probability', '0.05', '--emit', 'asm', '--seed', '1');
  assert.equal(pct.stdout, dec.stdout, '5% and 0.05 give the same program');
  const half = netmangle('build', 'tcp => drop', '--hook', 'xdp', '--probability', '50%', '--emit', 'asm', '--seed', '1');
  assert.notEqual(half.stdout, pct.stdout, 'the percentage reaches the program');
  for (const bad of ['150%', 'often']) {
    const r = netmangle('build', 'tcp => drop', '--hook', 'xdp', '--probability', bad, '--emit', 'asm');
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`^netmangle: --probability must be a number greater than 0 and at most 1, not "${bad}"\n`));
  }
});

test('run --probability 5% gets past the option (it then stops at the interface that is not there)', () => {
  const r = netmangle('run', 'tcp => drop', '--dev', 'nm-no-such-if', '--hook', 'xdp', '--probability', '5%', '--for', '1s');
  assert.doesNotMatch(r.stderr, /probability|not a number/, r.stderr);
  assert.notEqual(r.status, 0);
});
