/**
 * The delay line's bookkeeping (HoldQueue): release order, reorder by N and its timeout,
 * the limits, the distributions of jitter; `--max-held`; and the connection key the line
 * computes in TypeScript against the one the kernel's program stores in HELD_MAP.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { parseMaxHeld } from '../../src/cli/commands/run.js';
import { compileGroup, delayedMark, HELD_MAP } from '../../src/compiler/index.js';
import { connKeyOf, drawDelayNs, HoldQueue, seededRandom, type HoldSpec } from '../../src/delay/index.js';
import { testRun } from '../../src/kernel/index.js';
import { inNetns } from '../../src/kernel/netns.js';
import { loadCompiled } from '../../src/live/index.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { buildPacket, type PacketSpec } from '../helpers/packets.js';

const MS = 1_000_000;
const delay = (ms: number, jitterMs?: number, distribution?: 'uniform' | 'normal' | 'pareto'): HoldSpec => ({ kind: 'delay', ns: ms * MS, jitterNs: jitterMs === undefined ? undefined : jitterMs * MS, distribution });
const reorder = (by: number, timeoutMs = 50): HoldSpec => ({ kind: 'reorder', by, timeoutNs: timeoutMs * MS });
const items = <T>(rs: Array<{ item: T }>): T[] => rs.map((r) => r.item);

test('held packets leave in the order of their release times, ties in arrival order', () => {
  const q = new HoldQueue<string>();
  assert.ok(q.hold('a', 100, delay(30), 0));
  assert.ok(q.hold('b', 100, delay(10), 5 * MS));
  assert.ok(q.hold('c', 100, delay(25), 5 * MS)); // due at 30 ms, like a: a came first
  assert.deepEqual(items(q.due(14 * MS)), []);
  assert.deepEqual(items(q.due(15 * MS)), ['b']);
  assert.equal(q.nextNs(), 30 * MS);
  assert.deepEqual(items(q.due(31 * MS)), ['a', 'c']);
  assert.equal(q.nextNs(), undefined);
  assert.deepEqual({ held: q.stats.held, delayed: q.stats.delayed, peak: q.stats.peakHeld }, { held: 0, delayed: 3, peak: 3 });
});

test('reorder by N: released right after the Nth later packet of its connection, others do not count', () => {
  const q = new HoldQueue<string>();
  q.hold('A2', 100, reorder(3), 0, 'A');
  assert.ok(q.holds('A') && !q.holds('B'));
  assert.deepEqual(items(q.follow('A', 1)), []);
  assert.deepEqual(items(q.follow('B', 2)), [], 'another connection does not count');
  assert.deepEqual(items(q.follow('A', 3)), []);
  const out = q.follow('A', 4);
  assert.deepEqual(items(out), ['A2']);
  assert.equal(out[0]!.releaseNs, 4);
  assert.equal(q.holds('A'), false);
  assert.deepEqual(items(q.due(Number.MAX_SAFE_INTEGER)), [], 'not released twice by its timeout');
  assert.deepEqual({ overtaken: q.stats.overtaken, timedOut: q.stats.timedOut, followers: q.stats.followers, held: q.stats.held }, { overtaken: 1, timedOut: 0, followers: 4, held: 0 });
});

test('reorder: two held packets of one connection count the same followers; the timeout frees one without followers', () => {
  const q = new HoldQueue<string>();
  q.hold('x', 10, reorder(2), 0, 'A');
  q.hold('y', 10, reorder(1), 1, 'A');
  assert.deepEqual(items(q.follow('A', 2)), ['y']);
  assert.deepEqual(items(q.follow('A', 3)), ['x']);
  q.hold('z', 10, reorder(5, 20), 10 * MS, 'C');
  assert.deepEqual(items(q.due(29 * MS)), []);
  const t = q.due(30 * MS);
  assert.deepEqual(items(t), ['z']);
  assert.equal(q.holds('C'), false);
  assert.equal(q.stats.timedOut, 1);
});

test('beyond the limits a packet is not held, and is counted', () => {
  const q = new HoldQueue<number>({ packets: 2, bytes: 250 });
  assert.ok(q.hold(1, 100, delay(5), 0));
  assert.ok(q.hold(2, 100, delay(5), 0));
  assert.equal(q.hold(3, 10, delay(5), 0), false, 'packets');
  assert.deepEqual(items(q.due(5 * MS)), [1, 2]);
  assert.ok(q.hold(4, 200, delay(5), 6 * MS));
  assert.equal(q.hold(5, 51, delay(5), 6 * MS), false, 'bytes');
  assert.ok(q.hold(6, 50, delay(5), 6 * MS));
  assert.deepEqual({ overLimit: q.stats.overLimit, held: q.stats.held, heldBytes: q.stats.heldBytes }, { overLimit: 2, held: 2, heldBytes: 250 });
  assert.deepEqual(items(q.flush()), [4, 6]);
});

test('jitter: uniform stays within delay ± jitter; normal and pareto have the delay as mean and the jitter as spread', () => {
  const random = seededRandom(7);
  const n = 20_000;
  const draw = (s: HoldSpec) => Array.from({ length: n }, () => drawDelayNs(s as Extract<HoldSpec, { kind: 'delay' }>, random) / MS);
  const stats = (xs: number[]) => {
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    return { mean, sd: Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length), min: Math.min(...xs), max: Math.max(...xs) };
  };
  assert.deepEqual(draw(delay(50)).slice(0, 3), [50, 50, 50]);
  const u = stats(draw(delay(50, 10)));
  assert.ok(u.min >= 40 && u.max <= 60 && Math.abs(u.mean - 50) < 0.5, JSON.stringify(u));
  const g = stats(draw(delay(50, 10, 'normal')));
  assert.ok(Math.abs(g.mean - 50) < 0.5 && Math.abs(g.sd - 10) < 0.5 && g.max > 70, JSON.stringify(g));
  const p = stats(draw(delay(50, 10, 'pareto')));
  // Shape 3: finite variance but a heavy right tail; the sample sd converges slowly.
  assert.ok(Math.abs(p.mean - 50) < 1 && p.sd > 6 && p.sd < 14 && p.min >= 50 - 1.5 * (20 / Math.sqrt(3)) - 1e-9 && p.max > 80, JSON.stringify(p));
  assert.ok(stats(draw(delay(1, 10, 'normal'))).min >= 0, 'never below 0');
  assert.deepEqual(draw.call(null, delay(5, 1)).length, n);
  const a = seededRandom(3), b = seededRandom(3);
  assert.deepEqual([a(), a(), a()], [b(), b(), b()], 'a seed repeats its draws');
});

test('--max-held takes PACKETS, BYTES or PACKETS,BYTES, and refuses anything else with one line', () => {
  assert.deepEqual(parseMaxHeld('1000'), { packets: 1000, bytes: 64 * 1024 * 1024 });
  assert.deepEqual(parseMaxHeld('16MiB'), { packets: 10_000, bytes: 16 * 1024 * 1024 });
  assert.deepEqual(parseMaxHeld('500,2MB'), { packets: 500, bytes: 2_000_000 });
  assert.deepEqual(parseMaxHeld('500,4096'), { packets: 500, bytes: 4096 });
  for (const bad of ['', '0', '1,2,3', 'lots', '5MiB,100', '-1', '10 parsecs']) {
    assert.throws(() => parseMaxHeld(bad), (e: Error) => /^--max-held /.test(e.message) && !e.message.includes('\n'), bad);
  }
});

const FRAMES: Array<[string, PacketSpec]> = [
  ['tcp v4', { l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'tcp', sport: 40000, dport: 5201 } }],
  ['tcp v4 reply', { l3: { kind: 'ipv4', src: '198.18.0.2', dst: '198.18.0.1' }, l4: { kind: 'tcp', sport: 5201, dport: 40000 } }],
  ['udp v4 same address', { l3: { kind: 'ipv4', src: '198.18.0.9', dst: '198.18.0.9' }, l4: { kind: 'udp', sport: 9, dport: 7 } }],
  ['udp v4 vlan', { eth: { vlans: [{ vid: 5 }] }, l3: { kind: 'ipv4', src: '198.19.255.1', dst: '198.18.3.4' }, l4: { kind: 'udp', sport: 53, dport: 3333 } }],
  ['icmp echo', { l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'icmp', type: 8, ident: 0x1234 } }],
  ['icmp unreachable', { l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'icmp', type: 3, code: 1 } }],
  ['v4 fragment', { l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2', fragment: { offset: 2, more: false } }, l4: { kind: 'udp', sport: 1, dport: 2, payload: new Uint8Array(40) } }],
  ['tcp v6', { l3: { kind: 'ipv6', src: '2001:db8::2', dst: '2001:db8::1' }, l4: { kind: 'tcp', sport: 443, dport: 50000 } }],
  ['udp v6 ext', { l3: { kind: 'ipv6', src: '2001:db8::1', dst: '2001:db8:1::1', ext: [{ type: 'hop' }, { type: 'dest', len: 1 }] }, l4: { kind: 'udp', sport: 5, dport: 6 } }],
  ['v6 same address ports', { l3: { kind: 'ipv6', src: '2001:db8::7', dst: '2001:db8::7' }, l4: { kind: 'udp', sport: 0x0102, dport: 0x0201 } }],
  ['icmpv6 echo', { l3: { kind: 'ipv6', src: '2001:db8::1', dst: '2001:db8::2' }, l4: { kind: 'icmpv6', type: 129, ident: 77 } }],
  ['not ip', { l3: { kind: 'raw', ethertype: 0x0806, bytes: new Uint8Array(28) } }],
];

kernelTest('the connection key the delay line computes is the one the program stores in HELD_MAP, for every shape', () => {
  const group = parseRuleLine('frame => reorder', { dev: 'x', hook: 'egress' }).groups[0]!;
  const compiled = compileGroup(group, { seed: 1, lookupField, hold: { rule: new Map([[0, 0x7e000000]]), follower: 0x7e0000ff, mark: delayedMark(1) } });
  const ns = uniqueName('dlkey');
  spawnSync('ip', ['netns', 'add', ns]);
  const loaded = loadCompiled(compiled);
  try {
    const held = loaded.maps[HELD_MAP]!;
    for (const [name, spec] of FRAMES) {
      const frame = buildPacket(spec).frame;
      for (const k of held.keys()) held.delete(k);
      // bpf_redirect only records its target during a test run; a netns of its own all the same.
      const r = inNetns(ns, () => testRun(loaded.prog, { data: frame }));
      assert.equal(r.retval, 7, `${name}: TC_ACT_REDIRECT`);
      const keys = [...held.keys()];
      assert.equal(keys.length, 1, name);
      assert.equal(Buffer.from(keys[0]!).toString('hex'), connKeyOf(frame).toString('hex'), name);
      assert.equal(held.lookup(keys[0]!)!.readBigUInt64LE(0), 1n, `${name}: counted once`);
    }
    // Both directions of a connection share one key.
    assert.deepEqual(connKeyOf(buildPacket(FRAMES[0]![1]).frame), connKeyOf(buildPacket(FRAMES[1]![1]).frame));
  } finally {
    loaded.close();
    spawnSync('ip', ['netns', 'del', ns]);
  }
});
