/**
 * The clang command printed at the top of `build --emit c` output, and those in the docs, run
 * exactly as printed (through sh, on this Debian machine where `-target bpf` alone cannot find
 * asm/types.h) and give an object.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inCI } from '../helpers/kernel.js';
import { have } from './tools.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const bin = join(repo, 'bin', 'netmangle');
const noClang = have('clang') ? undefined : 'needs clang (scripts/setup.sh installs it)';
// In CI a missing clang fails the test instead of skipping it.
const clangTest = (name: string, fn: () => void) => test(name, { skip: !inCI && noClang }, () => {
  if (noClang) throw new Error(noClang);
  fn();
});

const sh = (line: string, cwd: string) => spawnSync('sh', ['-c', line], { cwd, encoding: 'utf8' });
const ELF = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/** The `//   clang …` line at the top of emitted C. */
function printedClang(c: string): string {
  const line = c.split('\n').slice(0, 10).find((l) => l.startsWith('//   clang '));
  assert.ok(line, `no clang command at the top:\n${c.slice(0, 400)}`);
  return line.slice('//   '.length);
}

clangTest('build --emit c to stdout: the printed command compiles the C saved as THIS.c', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-c-cmd-'));
  try {
    const r = spawnSync(process.execPath, [bin, 'build', 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)', '--hook', 'xdp', '--emit', 'c', '--seed', '3'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const cmd = printedClang(r.stdout);
    assert.match(cmd, /-I\/usr\/include\/\$\(clang -print-multiarch\)/);
    spawnSync('sh', ['-c', 'cat > THIS.c'], { cwd: dir, input: r.stdout });
    const cc = sh(cmd, dir);
    assert.equal(cc.status, 0, `${cmd}\n${cc.stderr}`);
    assert.deepEqual(readFileSync(join(dir, 'THIS.o')).subarray(0, 4), ELF);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

clangTest('build --emit c -o FILE: the printed command names FILE (quoted when it must be) and compiles it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-c-cmd-'));
  try {
    for (const name of ['psh.c', 'with space.c']) {
      const r = spawnSync(process.execPath, [bin, 'build', 'tcp.flags.push => set tcp.flags.push = 0', '--hook', 'egress', '--emit', 'c', '-o', name, '--seed', '3'], { cwd: dir, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const cmd = printedClang(readFileSync(join(dir, name), 'utf8'));
      const obj = name.replace(/\.c$/, '.o');
      assert.ok(cmd.endsWith(name.includes(' ') ? `-c '${name}' -o '${obj}'` : `-c ${name} -o ${obj}`), cmd);
      const cc = sh(cmd, dir);
      assert.equal(cc.status, 0, `${cmd}\n${cc.stderr}`);
      assert.deepEqual(readFileSync(join(dir, obj)).subarray(0, 4), ELF);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const ANCHORS = resolve(repo, '..', 'shared', 'anchors');
const anchorsMissing = existsSync(join(ANCHORS, 'xdp_ttl_pong.c')) ? undefined : `no xdp_ttl_pong.c in ${ANCHORS}`;

test('the clang commands in the docs run as written (on the article\'s program)', { skip: (noClang ?? anchorsMissing) && !inCI ? (noClang ?? anchorsMissing) : false }, () => {
  const lines: string[] = [];
  for (const doc of ['replay.md', 'objects.md']) {
    for (const l of readFileSync(join(repo, 'docs', doc), 'utf8').split('\n')) if (/^\s*clang /.test(l)) lines.push(l.trim());
  }
  assert.ok(lines.length >= 2, 'the docs show clang commands');
  const dir = mkdtempSync(join(tmpdir(), 'nm-c-doc-'));
  try {
    copyFileSync(join(ANCHORS, 'xdp_ttl_pong.c'), join(dir, 'xdp_ttl_pong.c'));
    for (const cmd of lines) {
      rmSync(join(dir, 'xdp_ttl_pong.o'), { force: true });
      const cc = sh(cmd, dir);
      assert.equal(cc.status, 0, `${cmd}\n${cc.stderr}`);
      assert.deepEqual(readFileSync(join(dir, 'xdp_ttl_pong.o')).subarray(0, 4), ELF);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
