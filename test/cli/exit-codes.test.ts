/**
 * docs/exit-codes.md is the one table of exit codes: its codes are exactly the constants the
 * code uses (EXIT in src/errors.ts), the README links to it, and the commands exit as it says.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EXIT, NetmangleError, UsageError } from '../../src/errors.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const doc = readFileSync(join(repo, 'docs', 'exit-codes.md'), 'utf8');
const netmangle = (...args: string[]) => spawnSync(process.execPath, [join(repo, 'bin', 'netmangle'), ...args], { encoding: 'utf8' });

/** The table's rows: code → the text of its meaning column. */
function documented(): Map<number, string> {
  const rows = new Map<number, string>();
  for (const m of doc.matchAll(/^\| (\d+) \| ([^|]+) \|/gm)) rows.set(Number(m[1]), m[2]!.trim());
  return rows;
}

test('the table documents exactly the exit codes the code defines', () => {
  const rows = documented();
  assert.deepEqual([...rows.keys()].sort((a, b) => a - b), [...new Set(Object.values(EXIT))].sort((a, b) => a - b));
  assert.equal(rows.get(EXIT.ok), 'success');
  assert.equal(rows.get(EXIT.failure), 'runtime failure');
  assert.equal(rows.get(EXIT.usage), 'usage error or bad input');
  assert.equal(rows.get(EXIT.internal), 'a bug in netmangle');
  assert.match(rows.get(EXIT.sigint)!, /SIGINT/);
  assert.match(rows.get(EXIT.sigterm)!, /SIGTERM/);
  assert.equal(EXIT.sigint, 128 + 2);
  assert.equal(EXIT.sigterm, 128 + 15);
  assert.equal(new NetmangleError('x').exitCode, EXIT.failure);
  assert.equal(new UsageError('x').exitCode, EXIT.usage);
});

test('the README links to the table', () => {
  assert.match(readFileSync(join(repo, 'README.md'), 'utf8'), /docs\/exit-codes\.md/);
});

test('the commands exit as the table says: usage mistakes (commander\'s too) are 2, help is 0', () => {
  assert.equal(netmangle('--help').status, EXIT.ok);
  assert.equal(netmangle('build', '--help').status, EXIT.ok);
  assert.equal(netmangle('--version').status, EXIT.ok);
  const unknown = netmangle('lab', 'down', '--no-such-option');
  assert.equal(unknown.status, EXIT.usage, unknown.stderr);
  assert.match(unknown.stderr, /unknown option '--no-such-option'/);
  assert.equal(netmangle('build').status, EXIT.usage, 'a missing argument');
  assert.equal(netmangle('build', 'tcp => => drop', '--hook', 'xdp', '--emit', 'c').status, EXIT.usage, 'a rule that does not parse');
});

test('the example in the table runs as written', () => {
  const block = doc.match(/^ {4}\$ (.*); echo "exit \$\?"\n((?: {4}.*\n)+)/m);
  assert.ok(block, 'the example is in the doc');
  const r = spawnSync('sh', ['-c', `${block[1]}; echo "exit $?"`], { cwd: repo, encoding: 'utf8' });
  assert.equal(r.stderr + r.stdout, block[2]!.replace(/^ {4}/gm, ''));
});
