/**
 * `delay DURATION [jitter DURATION]` and `reorder`: the language (parse, check, mistakes), the
 * compiled program's redirect and pass-through of delayed packets; and live in a lab: ping's RTT grows by the delay at h1's tc egress while the other
 * direction is untouched, jitter spreads RTTs within its bounds, and kill -9 leaves no TAP and
 * no program behind and traffic flowing undelayed again.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { compileGroup, delayedMark, SKB } from '../../src/compiler/index.js';
import { Lab, ping } from '../../src/lab/index.js';
import { holdPlan } from '../../src/live/index.js';
import { lookupField } from '../../src/rules/catalog.js';
import { formatAction } from '../../src/rules/format.js';
import { loadRulesFile, parseRuleLine } from '../../src/rules/load.js';
import { startRun } from '../faults/lab-support.js';
import { kernelTest, scaled, uniqueName } from '../helpers/kernel.js';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');

function group(text: string, hook: 'egress' | 'ingress' | 'xdp' = 'egress') {
  return parseRuleLine(text, { dev: 'eth0', hook }).groups[0]!;
}

test('delay DURATION parses at every hook, with its unit, and prints back the same', () => {
  const g = group('icmp.type == 8 => delay 50ms');
  const action = g.rules[0]!.actions[0]!;
  assert.deepEqual({ kind: action.kind, ns: action.kind === 'delay' ? action.ns : 0 }, { kind: 'delay', ns: 50_000_000 });
  assert.equal(formatAction(action), 'delay 50ms');
  const j = group('tcp => delay 2ms jitter 500us').rules[0]!.actions[0]!;
  assert.equal(formatAction(j), 'delay 2ms jitter 500us');
  assert.equal(formatAction(group('tcp => delay 2ms jitter 5ms distribution pareto', 'xdp').rules[0]!.actions[0]!), 'delay 2ms jitter 5ms distribution pareto');
  assert.deepEqual(holdPlan(group('tcp => delay 1s jitter 10ms', 'ingress')).specs, [{ kind: 'delay', ns: 1_000_000_000, jitterNs: 10_000_000, distribution: undefined }]);
});

test('reorder [by N] [timeout D] parses, defaults to by 1 timeout 50ms, and prints back the same', () => {
  const r = group('tcp.flags.push => reorder').rules[0]!.actions[0]!;
  assert.deepEqual({ ...r, span: undefined }, { kind: 'reorder', by: 1, timeoutNs: 50_000_000, span: undefined });
  assert.equal(formatAction(r), 'reorder');
  const r3 = group('tcp => reorder by 3 timeout 20ms', 'xdp').rules[0]!.actions[0]!;
  assert.equal(formatAction(r3), 'reorder by 3 timeout 20ms');
  assert.throws(() => group('tcp => reorder by 0'), /whole number from 1 to 1000/);
  assert.throws(() => group('tcp => reorder by'), /reorder by needs the number/);
  assert.throws(() => group('tcp => reorder timeout 5'), /timeout needs a duration/);
  assert.throws(() => group('tcp => reorder, delay 5ms'), /delay or reorder a packet, not both/);
  assert.throws(() => group('tcp => reorder, drop'), /drop discards the packet/);
  assert.throws(() => group('tcp => reorder, pass'), /nothing can follow reorder/);
});

test('a rules file takes delay and reorder as its action', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-delay-'));
  try {
    const file = join(dir, 'rules.yaml');
    writeFileSync(file, 'dev: eth0\nhook: egress\nrules:\n  - match: icmp.type == 8\n    action: delay 50ms jitter 5ms\n  - match: tcp\n    action: reorder by 2\n');
    assert.deepEqual(holdPlan(loadRulesFile(file).groups[0]!), {
      specs: [{ kind: 'delay', ns: 50_000_000, jitterNs: 5_000_000, distribution: undefined }, { kind: 'reorder', by: 2, timeoutNs: 50_000_000 }],
      ruleSpec: new Map([[0, 0], [1, 1]]),
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('delay mistakes are refused with one line; rules with the same hold share one spec', () => {
  assert.throws(() => group('icmp => delay 5'), /delay needs a duration with its unit/);
  assert.throws(() => group('icmp => delay 5ms jitter 6ms'), /jitter must not exceed the delay/);
  assert.doesNotThrow(() => group('icmp => delay 5ms jitter 6ms distribution normal'));
  assert.throws(() => group('icmp => delay 5ms, pass'), /nothing can follow delay/);
  assert.throws(() => group('ip.ttl == 5ms => drop'), /is a duration/);
  const three = { dev: 'eth0', hook: 'egress' as const, rules: [...group('icmp.type == 8 => delay 5ms').rules, ...group('icmp.type == 0 => delay 6ms').rules, ...group('udp => delay 5ms').rules] };
  assert.deepEqual([...holdPlan(three).ruleSpec], [[0, 0], [1, 1], [2, 0]]);
});

test('a delay rule compiles to a redirect to its TAP, and delayed packets pass; without a delay line it is refused', () => {
  const g = group('icmp.type == 8 => delay 50ms');
  assert.throws(() => compileGroup(g, { seed: 1, lookupField }), /delay and reorder run only where a delay line holds the packets/);
  const p = compileGroup(g, { seed: 1, lookupField, hold: { rule: new Map([[0, 4242]]), mark: delayedMark(4242) } });
  const markLoads = p.insns.filter((i) => i.code === 0x61 && i.off === SKB.mark);
  assert.ok(markLoads.length >= 1, 'the program reads skb->mark');
  assert.ok(p.insns.some((i) => i.imm === delayedMark(4242)), 'and compares it with the delay line mark');
  const call = p.insns.findIndex((i) => i.code === 0x85 && i.imm === 23);
  assert.ok(call > 0, 'bpf_redirect is called');
  assert.ok(p.insns.slice(0, call).some((i) => i.code === 0xb7 && i.dst === 1 && i.imm === 4242), 'to the TAP ifindex');
  const x = compileGroup(group('icmp.type == 8 => delay 50ms', 'xdp'), { seed: 1, lookupField, hold: { rule: new Map([[0, 4242]]), mark: delayedMark(4242) } });
  assert.ok(!x.insns.some((i) => i.imm === delayedMark(4242)), 'at xdp nothing comes back through the program: no mark test');
});

const TOPOLOGY: Parameters<typeof Lab.up>[0] = { hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'h2' }] };

function minRtt(result: { replies: Array<{ rttMs: number }> }): number {
  assert.ok(result.replies.length > 0, 'ping got replies');
  return Math.min(...result.replies.map((r) => r.rttMs));
}

kernelTest('lab: icmp.type == 8 => delay 50ms at h1 egress raises ping min RTT by 50 ms ± 5 ms; h2 -> h1 is unaffected; jitter stays in bounds', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('dl') });
  try {
    const base = minRtt(await ping(lab, 'h1', 'h2', { count: 5, intervalS: 0.1 }));
    const run = await startRun(['--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', 'icmp.type == 8 => delay 50ms']);
    let delayed: number, other: number;
    try {
      delayed = minRtt(await ping(lab, 'h1', 'h2', { count: 10, intervalS: 0.1 }));
      other = minRtt(await ping(lab, 'h2', 'h1', { count: 5, intervalS: 0.1 }));
    } finally {
      const stopped = await run.stop();
      assert.equal(stopped.code, 0, stopped.output);
      assert.ok((stopped.counters['rule-1']?.acted ?? 0) >= 10, stopped.output);
    }
    assert.ok(Math.abs(delayed - base - 50) <= 5, `min RTT ${base} ms -> ${delayed} ms`);
    assert.ok(other < base + 5, `h2 -> h1 (replies leave h1 undelayed): ${other} ms`);

    const jitter = await startRun(['--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', 'icmp.type == 8 => delay 30ms jitter 20ms']);
    let rtts: number[];
    try {
      rtts = (await ping(lab, 'h1', 'h2', { count: 20, intervalS: 0.05 })).replies.map((r) => r.rttMs);
    } finally {
      const stopped = await jitter.stop();
      assert.equal(stopped.code, 0, stopped.output);
    }
    assert.ok(rtts.length >= 18, `replies: ${rtts.length}`);
    // Never before its time; late by at most a scheduling delay of the line's thread (the
    // machine may be busy with other work; an emulated one, NETMANGLE_SLOW, schedules later).
    const lateness = scaled(15);
    for (const rtt of rtts) assert.ok(rtt >= 10 - 1 && rtt <= 50 + base + lateness, `RTT ${rtt} ms within 30 ± 20 ms (+${lateness} ms scheduling)`);
    assert.ok(Math.max(...rtts) - Math.min(...rtts) > 10, `jitter spreads RTTs: ${rtts.join(' ')}`);
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });

kernelTest('lab: kill -9 while packets are held leaves no TAP and no program, and traffic flows undelayed again', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('dk') });
  const ns = lab.netns('h1');
  const child = spawn(process.execPath, [BIN, 'run', '--netns', ns, '--dev', 'eth0', '--hook', 'egress', 'icmp.type == 8 => delay 2s'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  try {
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const deadline = Date.now() + scaled(20_000);
    while (!/^attached/m.test(out)) {
      assert.ok(Date.now() < deadline && child.exitCode === null, `netmangle run did not attach: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const taps = () => spawnSync('ip', ['-n', ns, '-o', 'link', 'show'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => /: nmdl\d+[:@]/.test(l));
    assert.equal(taps().length, 1, 'the TAP exists while running');
    // Echo requests go into the line and are held (2 s): kill while they are there.
    const held = lab.exec('h1', ['ping', '-n', '-c', '3', '-i', '0.2', '-W', '1', lab.address('h2')], { timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 500));
    child.kill('SIGKILL');
    await exited;
    await held;
    let left: string[] = [];
    for (let i = 0; i < 40; i++) {
      left = taps();
      const progs = spawnSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' }).stdout;
      const ours = (JSON.parse(progs || '[]') as Array<{ name?: string }>).filter((p) => p.name === 'nm_delay_back');
      if (left.length === 0 && ours.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(left, [], 'no TAP left');
    const progs = JSON.parse(spawnSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' }).stdout || '[]') as Array<{ name?: string }>;
    assert.equal(progs.filter((p) => p.name === 'nm_delay_back').length, 0, 'no delay line program left');
    const after = await ping(lab, 'h1', 'h2', { count: 5, intervalS: 0.1 });
    assert.equal(after.received, 5, after.output);
    assert.ok(minRtt(after) < 10, `undelayed again: ${minRtt(after)} ms`);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await lab.down();
  }
}, { timeout: 120_000 });
