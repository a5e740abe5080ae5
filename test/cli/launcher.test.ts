/**
 * bin/netmangle's start-up paths, on a copy of bin/ and dist/ in a temporary directory (with
 * node_modules linked): the per-command bundle and its V8 code cache, a cache that cannot be
 * read or written, a stale bundle (dist/ changed after bundling), and no build at all.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pcapGlobalHeader, pcapRecord } from '../helpers/pcap.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const built = existsSync(join(repo, 'dist', 'bundle', 'manifest.json'));

function copyTree(withDist: boolean): string {
  const dir = mkdtempSync(join(tmpdir(), 'nm-launcher-'));
  cpSync(join(repo, 'bin'), join(dir, 'bin'), { recursive: true });
  cpSync(join(repo, 'package.json'), join(dir, 'package.json'));
  symlinkSync(join(repo, 'node_modules'), join(dir, 'node_modules'));
  if (withDist) {
    mkdirSync(join(dir, 'dist'));
    for (const d of ['src', 'bundle']) cpSync(join(repo, 'dist', d), join(dir, 'dist', d), { recursive: true, preserveTimestamps: true });
    for (const f of readdirSync(join(dir, 'dist', 'bundle'))) if (f.endsWith('.v8cache')) rmSync(join(dir, 'dist', 'bundle', f));
  }
  return dir;
}

function netmangle(dir: string, ...args: string[]) {
  return spawnSync(process.execPath, [join(dir, 'bin', 'netmangle'), ...args], { encoding: 'utf8', env: { ...process.env, NETMANGLE_NO_BUNDLE: '' } });
}

const cacheFiles = (dir: string, bundle: string) => readdirSync(join(dir, 'dist', 'bundle')).filter((f) => f.startsWith(`${bundle}.cjs.`) && f.endsWith('.v8cache'));

test('the bundle answers like the unbundled CLI, and its first run leaves a code cache for that bundle only', { skip: !built && 'run npm run build first' }, () => {
  const dir = copyTree(true);
  try {
    const bundled = netmangle(dir, 'run', '--help');
    assert.equal(bundled.status, 0, bundled.stderr);
    const plain = spawnSync(process.execPath, [join(dir, 'bin', 'netmangle'), 'run', '--help'], { encoding: 'utf8', env: { ...process.env, NETMANGLE_NO_BUNDLE: '1' } });
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal(bundled.stdout, plain.stdout);
    assert.match(bundled.stdout, /--hook/);
    assert.equal(cacheFiles(dir, 'run').length, 1);
    assert.equal(cacheFiles(dir, 'replay').length, 0);
    const again = netmangle(dir, 'run', '--help');
    assert.equal(again.stdout, bundled.stdout);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the first runs of a bundle refresh its cache (generation byte 1..4), later runs leave it as it is', { skip: !built && 'run npm run build first' }, () => {
  const dir = copyTree(true);
  try {
    const generations: number[] = [];
    for (let i = 0; i < 5; i++) {
      assert.equal(netmangle(dir, 'status', '--help').status, 0);
      const [cache] = cacheFiles(dir, 'status');
      assert.ok(cache);
      generations.push(readFileSync(join(dir, 'dist', 'bundle', cache))[0]!);
    }
    assert.deepEqual(generations, [1, 2, 3, 4, 4]);
    const [cache] = cacheFiles(dir, 'status');
    const before = readFileSync(join(dir, 'dist', 'bundle', cache!));
    assert.equal(netmangle(dir, 'status', '--help').status, 0);
    assert.deepEqual(readFileSync(join(dir, 'dist', 'bundle', cache!)), before);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('replay\'s cache is taken by the next start although its JIT changes a V8 flag (the launcher sets it first)', { skip: !built && 'run npm run build first' }, () => {
  const dir = copyTree(true);
  try {
    // A pcap of one 42-byte Ethernet/IPv4 frame.
    const frame = Buffer.alloc(42);
    frame.writeUInt16BE(0x0800, 12);
    frame[14] = 0x45;
    frame.writeUInt16BE(28, 16);
    frame[22] = 64;
    frame[23] = 17;
    writeFileSync(join(dir, 'one.pcap'), Buffer.concat([pcapGlobalHeader(), pcapRecord(frame)]));
    const generations: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = netmangle(dir, 'replay', '--hook', 'xdp', 'ip => set ip.ttl = 7', join(dir, 'one.pcap'), '-o', join(dir, 'out.pcap'), '--no-progress', '--engine', 'jit');
      assert.equal(r.status, 0, r.stderr);
      const [cache] = cacheFiles(dir, 'replay');
      generations.push(readFileSync(join(dir, 'dist', 'bundle', cache!))[0]!);
    }
    assert.deepEqual(generations, [1, 2, 3], 'a refused cache would start again from 1 at every run');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a cache V8 rejects is replaced, and a cache path that cannot be read or written costs only the cache', { skip: !built && 'run npm run build first' }, () => {
  const dir = copyTree(true);
  try {
    assert.equal(netmangle(dir, '--version').status, 0);
    const [cache] = cacheFiles(dir, 'all');
    assert.ok(cache);
    const cachePath = join(dir, 'dist', 'bundle', cache);
    writeFileSync(cachePath, Buffer.alloc(4096, 7));
    const afterGarbage = netmangle(dir, '--version');
    assert.equal(afterGarbage.status, 0, afterGarbage.stderr);
    assert.equal(afterGarbage.stdout.trim(), '0.1.0');
    assert.notDeepEqual(readFileSync(cachePath), Buffer.alloc(4096, 7));

    // A directory where the cache file should be: reading and writing it both fail.
    rmSync(cachePath);
    mkdirSync(cachePath);
    const blocked = netmangle(dir, '--version');
    assert.equal(blocked.status, 0, blocked.stderr);
    assert.equal(blocked.stdout.trim(), '0.1.0');
    assert.equal(blocked.stderr, '');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dist/ changed after bundling: the changed code runs (unbundled), never the old bundle', { skip: !built && 'run npm run build first' }, () => {
  const dir = copyTree(true);
  try {
    const program = join(dir, 'dist', 'src', 'cli', 'program.js');
    const source = readFileSync(program, 'utf8');
    assert.ok(source.includes('Reproduce network misbehaviour on demand with eBPF'));
    writeFileSync(program, source.replace('Reproduce network misbehaviour on demand with eBPF', 'changed after bundling'));
    const r = netmangle(dir, '--help');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /changed after bundling/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a bundle edited in place (same size, new mtime) is not run', { skip: !built && 'run npm run build first' }, () => {
  const dir = copyTree(true);
  try {
    const bundle = join(dir, 'dist', 'bundle', 'all.cjs');
    const text = readFileSync(bundle, 'utf8');
    const marker = 'Reproduce network misbehaviour on demand with eBPF';
    assert.ok(text.includes(marker));
    writeFileSync(bundle, text.replace(marker, 'X'.repeat(marker.length)));
    utimesSync(bundle, new Date(), new Date(Date.now() + 5000));
    const r = netmangle(dir, '--help');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(marker));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('not built: one line saying how to build', () => {
  const dir = copyTree(false);
  try {
    const r = netmangle(dir, '--help');
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^netmangle: not built yet; run `npm ci && npm run build` in .*\n$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
