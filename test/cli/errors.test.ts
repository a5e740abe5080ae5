/**
 * Ordinary mistakes with paths and permissions are one line naming the path and what to do,
 * with exit 2 for a path the user gave and 1 for netmangle's own state (most often: not root),
 * never "internal error … (please report this)" with exit 70. Run as root and as `nobody`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeError, exitCodeOf, fromSystemError, NetmangleError } from '../../src/errors.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const bin = join(repo, 'bin', 'netmangle');
const RULE = 'tcp => drop';

/** Runs bin/netmangle, as `nobody` when asked (setpriv drops every privilege). */
function netmangle(args: string[], opts: { asNobody?: boolean } = {}) {
  const cmd = opts.asNobody ? 'setpriv' : process.execPath;
  const argv = opts.asNobody ? ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, bin, ...args] : [bin, ...args];
  return spawnSync(cmd, argv, { encoding: 'utf8' });
}

function assertOrdinary(r: ReturnType<typeof netmangle>, code: number, message: RegExp): void {
  assert.doesNotMatch(r.stderr, /internal error|please report|\n\s+at /, r.stderr);
  assert.equal(r.status, code, r.stderr);
  const lines = r.stderr.trimEnd().split('\n');
  assert.ok(lines.length <= 2, `one line and a hint at most:\n${r.stderr}`);
  assert.match(lines[0]!, message);
}

test('build -o into a directory that does not exist: the path and why, exit 2', () => {
  const r = netmangle(['build', RULE, '--hook', 'xdp', '-o', '/nonexistent/x.o']);
  assertOrdinary(r, 2, /^netmangle: cannot write \/nonexistent\/x\.o: no such file or directory$/);
});

test('build -o naming a directory: exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-err-'));
  try {
    const r = netmangle(['build', RULE, '--hook', 'xdp', '-o', dir]);
    assertOrdinary(r, 2, /cannot write .*: it is a directory$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('load of an object that does not exist, and a rules file that is a directory: exit 2', () => {
  assertOrdinary(netmangle(['load', '/nonexistent/x.o', '--dev', 'lo', '--hook', 'xdp']), 2, /cannot read \/nonexistent\/x\.o: no such file/);
  const dir = mkdtempSync(join(tmpdir(), 'nm-err-'));
  try {
    const rules = join(dir, 'rules.yaml');
    mkdirSync(rules);
    assertOrdinary(netmangle(['replay', rules, '/dev/null', '-o', join(dir, 'out.pcap')]), 2, /cannot read rules file .*rules\.yaml: it is a directory$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// As `nobody`: needs root to drop to it, so under CI=true this fails instead of skipping.
kernelTest('as nobody: build -o a file it may not write says permission denied, exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-err-'));
  try {
    chmodSync(dir, 0o755);
    const r = netmangle(['build', RULE, '--hook', 'xdp', '-o', join(dir, 'x.o')], { asNobody: true });
    assertOrdinary(r, 2, /cannot write .*x\.o: permission denied$/);
    assert.match(r.stderr, /\n  run it as root \(sudo\), or use a path you may write\n$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('as nobody: clear of a pinned set it may not remove says permission denied and to use sudo, exit 1', () => {
  // A record of a pinned set (in a namespace of this test's own) whose pin directory root owns.
  const netns = uniqueName('nmer');
  const pinDir = mkdtempSync(join(tmpdir(), 'nm-err-pin-'));
  writeFileSync(join(pinDir, 'prog'), '');
  chmodSync(pinDir, 0o755);
  mkdirSync('/run/netmangle/pinned', { recursive: true });
  const record = `/run/netmangle/pinned/${netns}.eth0.xdp.json`;
  writeFileSync(record, JSON.stringify({ dev: 'eth0', hook: 'xdp', netns, path: 'link', progId: 0, stateMapId: 0, seed: 1, since: new Date().toISOString(), rules: [], pinDir }));
  try {
    const r = netmangle(['clear', '--netns', netns], { asNobody: true });
    assertOrdinary(r, 1, /^netmangle: cannot (remove|list) .*nm-err-pin-.*: (permission denied|operation not permitted)$/);
    assert.match(r.stderr, /\n  run it as root \(sudo\)/);
    const asRoot = netmangle(['clear', '--netns', netns]);
    assert.equal(asRoot.status, 0, asRoot.stderr);
    assert.match(asRoot.stdout, new RegExp(`removed 0 rules from eth0 xdp \\(netns ${netns}\\)`));
  } finally {
    rmSync(record, { force: true });
    rmSync(pinDir, { recursive: true, force: true });
  }
});

test('a Node fs error reaching the top is one line with a hint and exit 1; anything else stays a bug (70)', () => {
  const enoent = Object.assign(new Error("ENOENT: no such file or directory, open '/x/y'"), { code: 'ENOENT', syscall: 'open', path: '/x/y', errno: -2 });
  assert.equal(describeError(enoent), 'cannot open /x/y: no such file or directory\n  check the path (the directory must exist)');
  assert.equal(exitCodeOf(enoent), 1);
  const eacces = Object.assign(new Error('EACCES'), { code: 'EACCES', syscall: 'mkdir', path: '/run/netmangle/runs' });
  assert.match(describeError(eacces), /^cannot create directory \/run\/netmangle\/runs: permission denied\n  run it as root/);
  for (const code of ['EPERM', 'EISDIR', 'ENOTDIR', 'EEXIST', 'ENOSPC', 'EROFS']) {
    const e = fromSystemError(Object.assign(new Error(code), { code, syscall: 'open', path: '/p' }));
    assert.ok(e instanceof NetmangleError, code);
    assert.doesNotMatch(describeError(e), /internal error/);
  }
  const bug = new TypeError('x is undefined');
  assert.match(describeError(bug), /^internal error: x is undefined \(please report this\)$/);
  assert.equal(exitCodeOf(bug), 70);
  assert.equal(exitCodeOf(Object.assign(new Error('E'), { code: 'ECONNRESET' })), 70);
});
