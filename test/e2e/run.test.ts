/**
 * `netmangle run` end to end, as a user runs it, in a lab of its own: the article's two
 * experiments with the receiver's checksum error counters watched (offloads on, and off so
 * the receiver really verifies), and kill -9 leaving nothing attached.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kernelProbe, kernelTest, scaled, uniqueName } from '../helpers/kernel.js';
import { Lab } from '../../src/lab/lab.js';
import { applyRule } from '../../src/lab/experiments.js';
import { INTERESTING_COUNTERS, nstatDelta, nstatSnapshot, ping, tcpTransfer } from '../../src/lab/measure.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { inNetns } from '../../src/kernel/netns.js';
import { ifindexByName } from '../../src/kernel/iface.js';
import { xdpQueryNetlink } from '../../src/kernel/rtnetlink.js';
import { programsOnHook } from '../helpers/hooks.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

const TTL_RULE = 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)';
const PSH_RULE = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';

/** h1 ── sw ── h2, with checksum offloads on (veth's default) or off on every end. */
function topology(offload: boolean, h1: { gso_max_segs?: number } = {}): TopologySpec {
  const ends = offload ? {} : { tx_checksum: 'off' as const, rx_checksum: 'off' as const };
  return { switch: 'sw', hosts: { h1, h2: {} }, links: [{ a: 'h1', b: 'sw', ...ends }, { a: 'h2', b: 'sw', ...ends }] };
}

const CSUM_COUNTERS = INTERESTING_COUNTERS.filter((n) => /Csum|HdrErrors/.test(n));

for (const offload of [true, false]) {
  const label = offload ? 'offloads on' : 'offloads off';

  kernelTest(`run: XDP random TTL on echo replies, 50 pings all answered (${label})`, async () => {
    await using lab = await Lab.up(topology(offload), { name: uniqueName('ttl') });
    const before = await nstatSnapshot(lab, 'h1');
    const rule = await applyRule(lab, 'h1', 'eth0', 'xdp', TTL_RULE, { seed: 11 });
    let result;
    try {
      result = await ping(lab, 'h1', 'h2', { count: 50, intervalS: 0.01 });
    } finally {
      await rule.detach();
    }
    const after = await nstatSnapshot(lab, 'h1');
    assert.equal(result.received, 50, result.output);
    for (const ttl of result.ttls) assert.ok(ttl >= 1 && ttl <= 64, `ttl ${ttl} out of 1..64`);
    assert.ok(new Set(result.ttls).size >= 15, `only ${new Set(result.ttls).size} distinct TTLs: ${result.ttls.join(' ')}`);
    assert.match(rule.output(), /rule rule-1: matched=50 acted=50 dropped=0/);
    for (const [name, delta] of Object.entries(nstatDelta(before, after, CSUM_COUNTERS))) assert.equal(delta, 0, `${name} rose by ${delta}`);
    // Detached: replies come back untouched.
    const clean = await ping(lab, 'h1', 'h2', { count: 3 });
    assert.deepEqual(clean.ttls, [64, 64, 64]);
  });

  kernelTest(`run: tc egress PSH on 1 in 10 TCP segments, as the receiver counts them (${label})`, async () => {
    // Every segment a packet of its own at the hook, for the baseline too.
    await using lab = await Lab.up(topology(offload, { gso_max_segs: 1 }), { name: uniqueName('psh') });
    // With offloads on, h1's own egress (checksum still owed by the kernel). With them off, the
    // switch's port towards h2, where forwarded segments carry final checksums that h2 verifies.
    const [host, dev] = offload ? ['h1', 'eth0'] : ['sw', 'h2'];
    const base = await tcpTransfer(lab, 'h1', 'h2', { bytes: 4_000_000 });
    const before = await nstatSnapshot(lab, 'h2');
    const rule = await applyRule(lab, host, dev, 'egress', PSH_RULE, { probability: 0.1, seed: 5 });
    let t;
    try {
      t = await tcpTransfer(lab, 'h1', 'h2', { bytes: 8_000_000 });
    } finally {
      await rule.detach();
    }
    const after = await nstatSnapshot(lab, 'h2');
    assert.ok(t.dataSegments > 2000, `only ${t.dataSegments} data segments`);
    // Without the rule some segments carry PSH (the last of each send); the rule sets it on ~10% of the rest.
    const ofTheRest = (t.pshShare - base.pshShare) / (1 - base.pshShare);
    assert.ok(ofTheRest > 0.07 && ofTheRest < 0.13,
      `PSH share ${t.pshShare.toFixed(3)} (baseline ${base.pshShare.toFixed(3)}): ${ofTheRest.toFixed(3)} of PSH-free segments, expected about 0.1`);
    for (const [name, delta] of Object.entries(nstatDelta(before, after, CSUM_COUNTERS))) assert.equal(delta, 0, `${name} rose by ${delta}`);
    if (!offload) {
      // The control: with checksums left stale on purpose, h2 does count the damage.
      const child = await startRun(['--netns', lab.netns(host), '--dev', dev, '--hook', 'egress', PSH_RULE, '--probability', '0.1', '--checksum', 'keep']);
      try {
        await tcpTransfer(lab, 'h1', 'h2', { bytes: 1_000_000, timeoutMs: 30_000 }).catch(() => undefined);
      } finally {
        child.kill('SIGINT');
        await waitExit(child);
      }
      const broken = nstatDelta(after, await nstatSnapshot(lab, 'h2'), ['TcpInCsumErrors']);
      assert.ok(broken.TcpInCsumErrors! > 0, 'with --checksum keep the receiver saw no checksum errors: the check above proves nothing');
    }
  });
}

/** How `run` attaches at `hook` on this kernel, as the probe says (for test names). */
function kernelProbeLabel(hook: 'xdp' | 'egress'): string {
  try {
    const path = kernelProbe().attach[hook];
    return path === 'link' ? 'XDP link' : path;
  } catch {
    return 'the probed path';
  }
}

/** Starts `netmangle run` and resolves once it printed its "attached" line. */
function startRun(args: string[]): Promise<import('node:child_process').ChildProcess> {
  const child = spawn(process.execPath, [bin, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      if (/^attached/m.test(out)) resolve(child);
    });
    child.on('close', (code) => reject(new Error(`netmangle run exited ${code} before attaching: ${err || out}`)));
  });
}

function waitExit(child: import('node:child_process').ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.on('close', () => resolve())));
}

kernelTest(`run: kill -9 leaves no program on the interface (xdp by ${kernelProbeLabel('xdp')}, egress by ${kernelProbeLabel('egress')})`, async () => {
  await using lab = await Lab.up(undefined, { name: uniqueName('kill') });
  const ns = lab.netns('h1');
  const xdp = await startRun(['--netns', ns, '--dev', 'eth0', '--hook', 'xdp', TTL_RULE]);
  const egress = await startRun(['--netns', ns, '--dev', 'eth0', '--hook', 'egress', PSH_RULE, '--probability', '0.1']);
  assert.equal(programsOnHook(ns, 'eth0', 'xdp').length, 2, 'one XDP program (reported as the program and its mode)');
  assert.equal(programsOnHook(ns, 'eth0', 'egress').length, 1);
  xdp.kill('SIGKILL');
  egress.kill('SIGKILL');
  await Promise.all([waitExit(xdp), waitExit(egress)]);
  // Within 1 s (scaled on a slow machine) nothing of the dead run may be left acting.
  const deadline = Date.now() + scaled(1000);
  for (;;) {
    const left = { xdp: programsOnHook(ns, 'eth0', 'xdp'), egress: programsOnHook(ns, 'eth0', 'egress') };
    if (left.xdp.length === 0 && left.egress.length === 0) return;
    if (Date.now() > deadline) assert.fail(`programs stayed attached after kill -9: ${JSON.stringify(left)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
});

kernelTest('run: a reader that goes away (| head -1) neither crashes it nor leaves the program attached', async () => {
  await using lab = await Lab.up(undefined, { name: uniqueName('pipe') });
  const ns = lab.netns('h1');
  const child = await startRun(['--netns', ns, '--dev', 'eth0', '--hook', 'egress', PSH_RULE]);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  // The reader of stdout closes, as `head -1` does after the first line; the exit summary then
  // goes nowhere.
  child.stdout!.destroy();
  await new Promise((r) => setTimeout(r, 200));
  child.kill('SIGINT');
  const code = await new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.on('close', (c) => resolve(c))));
  assert.equal(code, 0, err);
  assert.doesNotMatch(err, /EPIPE|Error|at /, 'no stack trace');
  assert.deepEqual(programsOnHook(ns, 'eth0', 'egress'), [], 'detached');
});

kernelTest('run: errors a user can act on, one line each, non-zero exit, nothing attached', async () => {
  await using lab = await Lab.up(undefined, { name: uniqueName('err') });
  const ns = lab.netns('h1');
  const cases: Array<{ args: string[]; expect: RegExp }> = [
    { args: ['--netns', ns, '--dev', 'nope0', '--hook', 'xdp', TTL_RULE], expect: /no interface nope0/ },
    { args: ['--netns', 'nm-no-such-ns', '--dev', 'eth0', '--hook', 'xdp', TTL_RULE], expect: /no network namespace nm-no-such-ns/ },
    { args: ['--netns', ns, '--dev', 'eth0', '--hook', 'xdp', 'icmp.type == 0 => set ip.tll = 1'], expect: /unknown field "ip\.tll".*ip\.ttl/s },
    { args: ['--netns', ns, '--dev', 'eth0', '--hook', 'egress', 'tcp => set tcp.flags.push = 2'], expect: /tcp\.flags\.push/ },
    { args: ['--netns', ns, '--dev', 'eth0', '--hook', 'sideways', TTL_RULE], expect: /--hook sideways/ },
    { args: ['--netns', ns, '--hook', 'xdp', TTL_RULE], expect: /needs --dev/ },
    { args: ['--netns', ns, '--dev', 'eth0', '--hook', 'xdp', TTL_RULE, '--probability', '2'], expect: /probability/ },
  ];
  for (const c of cases) {
    const r = await new Promise<{ code: number | null; stderr: string; stdout: string }>((resolve) => {
      const child = spawn(process.execPath, [bin, 'run', ...c.args, '--for', '1s'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      let stdout = '';
      child.stderr.on('data', (d) => (stderr += d));
      child.stdout.on('data', (d) => (stdout += d));
      child.on('close', (code) => resolve({ code, stderr, stdout }));
    });
    assert.notEqual(r.code, 0, `${c.args.join(' ')} exited 0`);
    assert.match(r.stderr, c.expect, `${c.args.join(' ')}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /\n\s+at /, `stack trace for ${c.args.join(' ')}: ${r.stderr}`);
    assert.doesNotMatch(r.stdout, /^attached/m);
  }
  const ifindex = ifindexByName('eth0', ns);
  assert.equal(inNetns(ns, () => xdpQueryNetlink(ifindex)).attached, 'none');
});

kernelTest('run --pin keeps the rule after exit; status shows it with counters; clear removes it', async () => {
  await using lab = await Lab.up(undefined, { name: uniqueName('pin') });
  const ns = lab.netns('h1');
  const run = (args: string[]) => new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code, out }));
  });
  try {
    const pinned = await run(['run', '--netns', ns, '--dev', 'eth0', '--hook', 'xdp', 'icmp.type == 0 => set ip.ttl = 9', '--pin', '--seed', '1']);
    assert.equal(pinned.code, 0, pinned.out);
    const p = await ping(lab, 'h1', 'h2', { count: 3 });
    assert.deepEqual(p.ttls, [9, 9, 9]);
    const status = await run(['status', '--json']);
    const entry = (JSON.parse(status.out) as Array<{ netns?: string; kind: string; counters?: { rules: Array<{ acted: number }> } }>)
      .find((e) => e.netns === ns);
    assert.equal(entry?.kind, 'pinned');
    assert.equal(entry?.counters?.rules[0]?.acted, 3);
  } finally {
    const cleared = await run(['clear', '--netns', ns]);
    assert.match(cleared.out, /removed 1 rule from eth0 xdp/);
  }
  const after = await ping(lab, 'h1', 'h2', { count: 2 });
  assert.deepEqual(after.ttls, [64, 64]);
  const ifindex = ifindexByName('eth0', ns);
  assert.equal(inNetns(ns, () => xdpQueryNetlink(ifindex)).attached, 'none');
});
