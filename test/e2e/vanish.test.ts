/**
 * The interface or namespace of a running `netmangle run` deleted under it: the run notices,
 * says so in one line, detaches (a delay line's TAP removed, its records gone from status)
 * and exits 1. Also: a --for longer than setTimeout's 24.8 days keeps the run attached.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { inNetns } from '../../src/kernel/netns.js';
import { ifindexByName } from '../../src/kernel/iface.js';
import { queryProgs } from '../../src/kernel/info.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ip(...args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Two namespaces joined by a veth pair: `dev` in `ns`, its peer `peer` in `other`. */
function pair(): { ns: string; other: string; dev: string; peer: string; [Symbol.dispose](): void } {
  const ns = uniqueName('vani');
  const other = uniqueName('vano');
  ip('netns', 'add', ns);
  ip('netns', 'add', other);
  ip('-n', ns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'v1', 'netns', other);
  ip('-n', ns, 'link', 'set', 'v0', 'up');
  ip('-n', other, 'link', 'set', 'v1', 'up');
  return {
    ns, other, dev: 'v0', peer: 'v1',
    [Symbol.dispose]() {
      for (const n of [ns, other]) spawnSync('ip', ['netns', 'del', n]);
    },
  };
}

interface Run {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
}

function startRun(args: string[]): Promise<Run> {
  const child = spawn(process.execPath, [bin, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      if (/^attached/m.test(out)) resolve({ child, out: () => out, err: () => err, exit });
    });
    void exit.then((code) => reject(new Error(`run exited ${code} before attaching: ${err || out}`)));
  });
}

/** The run's exit code, or a failure (and SIGKILL) if it is still running after `ms`. */
async function exitWithin(run: Run, ms: number): Promise<number | null> {
  const timeout = sleep(ms).then(() => 'timeout' as const);
  const r = await Promise.race([run.exit, timeout]);
  if (r === 'timeout') {
    run.child.kill('SIGKILL');
    assert.fail(`run still running ${ms} ms after its interface went away: ${run.err()}`);
  }
  return r;
}

function statusOf(ns: string): unknown[] {
  const r = spawnSync(process.execPath, [bin, 'status', '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout) as Array<{ netns?: string }>).filter((e) => e.netns === ns);
}

const taps = (ns: string): string[] => [...ip('-n', ns, '-o', 'link', 'show').matchAll(/^\d+: (nmdl\d+)/gm)].map((m) => m[1]!);

for (const rule of ['ip => set ip.ttl = 9', 'ip => delay 5ms']) {
  const what = rule.includes('delay') ? 'with a delay line' : 'without a delay line';

  kernelTest(`run: ip link del of its interface (${what}) → one line, detached, nothing left, exit 1`, async () => {
    using p = pair();
    const run = await startRun(['--netns', p.ns, '--dev', p.dev, '--hook', 'egress', rule, '--seed', '1']);
    assert.equal(statusOf(p.ns).length, 1, 'status lists the run while it runs');
    if (rule.includes('delay')) assert.equal(taps(p.ns).length, 1, 'the delay line has its TAP');
    ip('-n', p.ns, 'link', 'del', p.dev);
    assert.equal(await exitWithin(run, 10_000), 1, run.err());
    assert.match(run.err(), new RegExp(`^netmangle: interface v0 in namespace ${p.ns} was deleted or moved to another namespace; detached\\n`, 'm'));
    assert.doesNotMatch(run.err(), /internal error|\n\s+at /);
    assert.match(run.out(), /^detached \(interface v0 /m);
    assert.deepEqual(taps(p.ns), [], 'the TAP is gone');
    assert.deepEqual(statusOf(p.ns), [], 'status lists nothing');
  });

  kernelTest(`run: ip netns del of its namespace (${what}) → one line, detached, the namespace freed, exit 1`, async () => {
    using p = pair();
    const run = await startRun(['--netns', p.ns, '--dev', p.dev, '--hook', 'egress', rule, '--seed', '1']);
    ip('netns', 'del', p.ns);
    assert.equal(await exitWithin(run, 10_000), 1, run.err());
    assert.match(run.err(), new RegExp(`^netmangle: namespace ${p.ns} was deleted; detached\\n`, 'm'));
    assert.doesNotMatch(run.err(), /internal error|\n\s+at /);
    assert.deepEqual(statusOf(p.ns), [], 'status lists nothing');
    // Nothing of ours keeps the deleted namespace alive (the TAP did): it is freed, and the
    // veth's other end goes with it.
    let left = true;
    for (let i = 0; i < 50 && left; i++) {
      left = ip('-n', p.other, '-o', 'link', 'show').includes(`${p.peer}@`);
      if (left) await sleep(100);
    }
    assert.equal(left, false, `${p.peer} is still in ${p.other}: the deleted namespace lives on`);
  });
}

kernelTest('run: the interface moved to another namespace counts as gone (netlink tc path)', async () => {
  using p = pair();
  const run = await startRun(['--netns', p.ns, '--dev', p.dev, '--hook', 'ingress', 'ip => drop', '--attach', 'netlink', '--seed', '1']);
  ip('-n', p.ns, 'link', 'set', p.dev, 'netns', p.other);
  assert.equal(await exitWithin(run, 10_000), 1, run.err());
  assert.match(run.err(), /was deleted or moved to another namespace; detached/);
  assert.deepEqual(statusOf(p.ns), []);
});

kernelTest('run --for 597h stays attached (setTimeout alone would fire at once), and a rename is not a deletion', async () => {
  using p = pair();
  const run = await startRun(['--netns', p.ns, '--dev', p.dev, '--hook', 'egress', 'ip => set ip.ttl = 9', '--for', '597h', '--seed', '1']);
  ip('-n', p.ns, 'link', 'set', p.dev, 'down');
  ip('-n', p.ns, 'link', 'set', p.dev, 'name', 'v0renamed');
  await sleep(1500);
  assert.equal(run.child.exitCode, null, `run ended by itself: ${run.out()} ${run.err()}`);
  assert.equal(statusOf(p.ns).length, 1);
  run.child.kill('SIGINT');
  assert.equal(await run.exit, 0, run.err());
  assert.doesNotMatch(run.err(), /TimeoutOverflowWarning/);
  assert.match(run.out(), /^detached \(SIGINT\)/m);
});

kernelTest('load: an object attached to an interface that is then deleted → one line, exit 1', async () => {
  using p = pair();
  const dir = mkdtempSync(join(tmpdir(), 'nm-vanish-'));
  try {
    const obj = join(dir, 'ttl.o');
    const built = spawnSync(process.execPath, [bin, 'build', 'ip => set ip.ttl = 9', '--hook', 'egress', '-o', obj, '--seed', '1'], { encoding: 'utf8' });
    assert.equal(built.status, 0, built.stderr);
    const child = spawn(process.execPath, [bin, 'load', obj, '--netns', p.ns, '--dev', p.dev, '--hook', 'egress'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d;
        if (/^attached/m.test(out)) resolve();
      });
      void exit.then((code) => reject(new Error(`load exited ${code}: ${err}`)));
    });
    ip('-n', p.ns, 'link', 'del', p.dev);
    const code = await exitWithin({ child, out: () => out, err: () => err, exit }, 10_000);
    assert.equal(code, 1, err);
    assert.match(err, /^netmangle: interface v0 in namespace .* was deleted or moved to another namespace; detaching\n/m);
    assert.doesNotMatch(err, /internal error|\n\s+at /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('run: its delay line\'s TAP deleted by hand → one line, detached, exit 1', async () => {
  using p = pair();
  const run = await startRun(['--netns', p.ns, '--dev', p.dev, '--hook', 'egress', 'ip => delay 5ms', '--seed', '1']);
  const [tap] = taps(p.ns);
  assert.ok(tap, 'the delay line has a TAP');
  ip('-n', p.ns, 'link', 'del', tap);
  assert.equal(await exitWithin(run, 10_000), 1, run.err());
  assert.match(run.err(), new RegExp(`^netmangle: interface ${tap} \\(the delay line's TAP\\) in namespace ${p.ns} was deleted or moved to another namespace; detached\\n`, 'm'));
  assert.deepEqual(statusOf(p.ns), []);
  // The rule's program went with the run: the interface's egress is free again.
  assert.deepEqual(inNetns(p.ns, () => queryProgs(ifindexByName(p.dev, p.ns), 'tcx_egress')).progIds, []);
});
