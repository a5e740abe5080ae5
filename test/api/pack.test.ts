/**
 * The package as a user gets it: `npm pack`, installed into an empty folder without the network,
 * then a TypeScript program there (type-checked against the installed declarations) imports
 * 'netmangle', attaches a rule in a lab, makes traffic, reads counters and disposes; this test asks
 * the kernel what is on the hook at each step. The installed CLI runs too (its bundles and koffi).
 *
 * The install is offline: the folder gets a package-lock.json made from this project's (the
 * runtime dependencies at the versions tested here, with their registry tarball URLs), so npm needs
 * only the tarballs that `npm ci` left in its cache, not the registry's package documents.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { programsIn, programsOn } from './hooks.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

interface PackedFile { path: string; size: number }
interface Packed { filename: string; size: number; unpackedSize: number; entryCount: number; files: PackedFile[] }

function sh(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} in ${cwd}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** `npm pack` into `dir`; the JSON npm reports. */
function pack(dir: string): Packed {
  const out = sh('npm', ['pack', '--json', '--pack-destination', dir], ROOT);
  return (JSON.parse(out) as Packed[])[0]!;
}

/** A lock file for an app whose one dependency is the tarball: netmangle's runtime dependencies from this project's lock. */
function appLock(tarball: string): object {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, Record<string, unknown>> };
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  const packages: Record<string, unknown> = {
    '': { name: 'app', dependencies: { netmangle: `file:${tarball}` } },
    'node_modules/netmangle': { version: pkg.version, resolved: `file:${tarball}`, license: pkg.license, dependencies: pkg.dependencies, bin: pkg.bin, engines: pkg.engines },
  };
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key === '' || entry.dev || entry.link || !key.startsWith('node_modules/')) continue;
    const name = key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);
    packages[key] = { resolved: `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${String(entry.version)}.tgz`, ...entry };
  }
  return { name: 'app', lockfileVersion: 3, requires: true, packages };
}

/** Packs and installs into a fresh folder; returns the folder and what was packed. */
function installPacked(): { dir: string; app: string; packed: Packed } {
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-pack-'));
  const packed = pack(dir);
  const app = join(dir, 'app');
  sh('mkdir', [app], dir);
  const tarball = join(dir, packed.filename);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module', dependencies: { netmangle: `file:${tarball}` } }, null, 2));
  writeFileSync(join(app, 'package-lock.json'), JSON.stringify(appLock(tarball), null, 2));
  sh('npm', ['ci', '--offline', '--no-audit', '--no-fund'], app);
  return { dir, app, packed };
}

const SMOKE = `
import { createInterface } from 'node:readline';
import { attach, build, Lab, NetmangleError, UsageError, type Fault } from 'netmangle';

const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (o: object): void => void process.stdout.write(JSON.stringify(o) + '\\n');
/** Waits for the test to look at the hooks. */
const next = async (): Promise<void> => void (await input.next());

const lab = await Lab.up({ hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'h2' }] }, { name: process.argv[2] });
try {
  const netns = lab.netns('h1');
  const fault: Fault = await attach('icmp.type == 8 => drop', { dev: 'eth0', hook: 'egress', netns }, { every: 2 });
  const ping = await lab.exec('h1', ['ping', '-c', '4', '-i', '0.05', '-W', '1', lab.address('h2')]);
  say({ step: 'attached', netns, attachment: fault.attachments[0], counters: fault.counters(), ping: ping.stdout });
  await next();
  await fault[Symbol.asyncDispose]();
  say({ step: 'disposed', attached: fault.attached });
  await next();

  try {
    await using thrown = await attach('icmp => drop', { dev: 'eth0', hook: 'ingress', netns });
    say({ step: 'inside', programId: thrown.attachments[0]!.programId });
    await next();
    throw new Error('boom');
  } catch (err) {
    if ((err as Error).message !== 'boom') throw err;
  }
  say({ step: 'thrown' });
  await next();

  const errors: object[] = [];
  const bad: Array<[string, { dev: string; hook: 'egress'; netns: string }]> = [
    ['icmp.tyep == 8 => drop', { dev: 'eth0', hook: 'egress', netns }],
    ['icmp => drop', { dev: 'nope0', hook: 'egress', netns }],
    ['icmp => drop', { dev: 'eth0', hook: 'egress', netns: 'no-such-netns-' + process.pid }],
  ];
  for (const [rule, target] of bad) {
    try {
      await attach(rule, target);
      errors.push({ thrown: false });
    } catch (err) {
      const e = err as NetmangleError;
      errors.push({ thrown: true, netmangle: e instanceof NetmangleError, usage: e instanceof UsageError, firstLine: e.message.split('\\n')[0], exitCode: e.exitCode });
    }
  }
  const elf = build('tcp.flags.syn => drop', { dev: 'eth0', hook: 'xdp' });
  say({ step: 'errors', errors, elf: Buffer.from(elf.subarray(0, 4)).toString('latin1') });
  await next();
} finally {
  await lab.down();
}
say({ step: 'done' });
process.exit(0);
`;

function compileSmoke(app: string): void {
  writeFileSync(join(app, 'smoke.mts'), SMOKE);
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'esnext.disposable'], strict: true,
      typeRoots: [join(ROOT, 'node_modules', '@types')], types: ['node'], skipLibCheck: false, noEmitOnError: true,
    },
    files: ['smoke.mts'],
  }, null, 2));
  sh(process.execPath, [TSC, '-p', '.'], app);
}

test('npm pack: built code, declarations, bundles, bin, README, docs, LICENSE; no tests, benches or fixtures', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-pack-'));
  try {
    const packed = pack(dir);
    const paths = packed.files.map((f) => f.path);
    for (const p of ['package.json', 'README.md', 'LICENSE', 'bin/netmangle', 'dist/src/api/index.js', 'dist/src/api/index.d.ts', 'dist/bundle/manifest.json', 'docs/api.md', 'dist/src/delay/worker.js']) {
      assert.ok(paths.includes(p), `${p} is packed`);
    }
    const unwanted = paths.filter((p) => /^(test|bench|scripts|examples|src)\//.test(p) || /^dist\/(test|bench)\//.test(p) || /\.v8cache$|\.tsbuildinfo$|fixtures/.test(p));
    assert.deepEqual(unwanted, []);
    assert.match(readFileSync(join(ROOT, 'LICENSE'), 'utf8'), /GNU GENERAL PUBLIC LICENSE\s+Version 2, June 1991/);
    t.diagnostic(`packed: ${packed.entryCount} files, ${packed.size} bytes (${packed.unpackedSize} unpacked)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('the packed package installed offline elsewhere: import netmangle, attach in a lab, counters, dispose leaves the hooks empty; the installed CLI runs', async () => {
  const { dir, app } = installPacked();
  const labName = uniqueName('pkg');
  let child: ReturnType<typeof spawn> | undefined;
  try {
    compileSmoke(app);
    const bin = join(app, 'node_modules', '.bin', 'netmangle');
    assert.match(sh(bin, ['--version'], app), /^\d+\.\d+\.\d+/);
    const probe = sh(bin, ['probe'], app);
    assert.match(probe, /tcx|netlink/);
    sh(bin, ['build', 'tcp.flags.syn => drop', '--hook', 'xdp', '--seed', '1', '-o', join(dir, 'x.o')], app);
    assert.equal(readFileSync(join(dir, 'x.o')).subarray(0, 4).toString('latin1'), '\x7fELF');

    child = spawn(process.execPath, [join(app, 'smoke.mjs'), labName], { cwd: app, stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child!.on('close', (code) => resolve(code)));
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const step = async (name: string): Promise<Record<string, any>> => {
      const r = await Promise.race([lines.next(), exited.then((code) => ({ done: true, value: `exit ${code}` }))]);
      assert.ok(!r.done, `smoke script ended before "${name}": ${stderr}`);
      const msg = JSON.parse(r.value as string) as Record<string, any>;
      assert.equal(msg.step, name, `${r.value as string}\n${stderr}`);
      return msg;
    };
    const go = () => child!.stdin!.write('\n');

    const attached = await step('attached');
    const netns = attached.netns as string;
    assert.deepEqual(programsOn(netns, 'eth0', 'egress'), [attached.attachment.programId]);
    assert.ok(attached.counters.rules[0].matched >= 4, JSON.stringify(attached.counters));
    assert.ok(attached.counters.rules[0].acted > 0 && attached.counters.rules[0].dropped > 0, JSON.stringify(attached.counters));
    go();
    assert.equal((await step('disposed')).attached, false);
    assert.deepEqual(programsIn(netns), [], 'nothing attached once disposed, the process still running');
    go();
    const inside = await step('inside');
    assert.deepEqual(programsOn(netns, 'eth0', 'ingress'), [inside.programId]);
    go();
    await step('thrown');
    assert.deepEqual(programsIn(netns), [], 'await using detached when the block threw');
    go();
    const { errors, elf } = await step('errors');
    assert.equal(elf, '\x7fELF');
    assert.deepEqual(errors.map((e: any) => [e.thrown, e.netmangle]), [[true, true], [true, true], [true, true]]);
    assert.deepEqual(errors.map((e: any) => e.exitCode), [2, 1, 1]);
    assert.match(errors[0].firstLine, /^unknown field "icmp\.tyep" \(did you mean icmp\.type\?\)$/);
    assert.match(errors[1].firstLine, /^no interface nope0 in namespace /);
    assert.match(errors[2].firstLine, /^no network namespace no-such-netns-\d+ /);
    assert.deepEqual(programsIn(netns), []);
    go();
    await step('done');
    assert.equal(await exited, 0, stderr);
  } finally {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    spawnSync(join(ROOT, 'bin', 'netmangle'), ['lab', 'down', labName], { encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
  }
}, { timeout: 180_000 });
