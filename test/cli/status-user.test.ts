/**
 * `netmangle status` as an ordinary user: it lists what is attached without counters, and a
 * stale record (its process gone) that only root may remove is left alone instead of crashing
 * with EACCES. Needs root to set the scene (and runuser to drop to nobody).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kernelTest } from '../helpers/kernel.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

kernelTest('status as nobody: no internal error on a stale record root owns; root\'s status sweeps it', (t) => {
  // The checkout must be readable by nobody (it is not under a private home directory, say).
  const readable = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, '-e', `require(${JSON.stringify(join(dirname(bin), '..', 'node_modules', 'commander', 'package.json'))}); require('fs').accessSync(${JSON.stringify(bin)})`]);
  if (readable.status !== 0) {
    t.skip(`nobody cannot read this checkout (${dirname(dirname(bin))})`);
    return;
  }
  // A pid that is certainly gone: a child that has exited and been reaped.
  const gone = spawnSync('true').pid!;
  mkdirSync('/run/netmangle/runs', { recursive: true });
  const file = `/run/netmangle/runs/${gone}.96.json`;
  writeFileSync(file, JSON.stringify({ dev: 'stale0', hook: 'egress', path: 'tcx', progId: 0, stateMapId: 0, seed: 1, rules: [], since: '2026-01-01T00:00:00.000Z', pid: gone }));
  try {
    const asNobody = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, bin, 'status'], { encoding: 'utf8' });
    assert.equal(asNobody.status, 0, asNobody.stderr);
    assert.doesNotMatch(asNobody.stderr, /internal error|EACCES/);
    assert.doesNotMatch(asNobody.stdout, /stale0/, 'a dead run is not listed');
    assert.ok(existsSync(file), 'nobody could not remove it');
    const asRoot = spawnSync(process.execPath, [bin, 'status'], { encoding: 'utf8' });
    assert.equal(asRoot.status, 0, asRoot.stderr);
    assert.equal(existsSync(file), false, "root's status removes the stale record");
  } finally {
    rmSync(file, { force: true });
  }
});
