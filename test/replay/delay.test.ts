/**
 * `delay` and `reorder` offline: replay holds packets on the capture's clock, writes them at
 * their release time (the output stays in time order), releases reordered packets after the
 * next N packets of their own connection or by their timeout, repeats itself byte for byte for
 * one seed, and gives the same file with every engine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPcapWriter, readAllPackets, type CapturePacket } from '../../src/pcap/index.js';
import { replayCapture, formatSummaryTable, selectGroups, type ReplayEngine, type ReplaySummary } from '../../src/replay/index.js';
import { loadRulesFile } from '../../src/rules/load.js';
import { parseRuleLine, type RuleLineOptions } from '../../src/rules/load.js';
import type { Hook } from '../../src/rules/ast.js';
import { uncountHeld } from '../../src/delay/held.js';
import type { HoldLimits } from '../../src/delay/queue.js';
import { createMap } from '../../src/vm/index.js';
import { buildPacket } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');
const BASE_SEC = 1_700_000_000;
const MS = 1_000_000;

const udp = (id: number, dport = 9): Uint8Array =>
  buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2', id: id & 0xffff }, l4: { kind: 'udp', sport: 5000, dport, payload: new Uint8Array(32).fill(id & 0xff) } }).frame;

/** A segment of connection `conn` (198.18.0.1:40000+conn -> 198.18.0.2:80), or of its reverse direction. */
const seg = (conn: number, seq: number, flags = 0x10, reverse = false): Uint8Array => {
  const a = { addr: '198.18.0.1', port: 40000 + conn }, b = { addr: '198.18.0.2', port: 80 };
  const [s, d] = reverse ? [b, a] : [a, b];
  return buildPacket({ l3: { kind: 'ipv4', src: s.addr, dst: d.addr }, l4: { kind: 'tcp', sport: s.port, dport: d.port, seq, flags, payload: new Uint8Array(100) } }).frame;
};
const PSH_ACK = 0x18;

interface Frame { frame: Uint8Array; tNs: number }

function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'nm-replay-delay-'));
  return fn(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

async function writeCapture(path: string, frames: readonly Frame[]): Promise<void> {
  const w = createPcapWriter(path, { nanosecond: true });
  for (const f of frames) w.write({ data: f.frame, tsSec: BASE_SEC + Math.floor(f.tNs / 1e9), tsNsec: f.tNs % 1e9 });
  await w.close();
}

const tOf = (p: CapturePacket): number => (p.tsSec - BASE_SEC) * 1e9 + p.tsNsec;
const ipId = (p: CapturePacket): number => (p.data[18]! << 8) | p.data[19]!;
const tcpSeq = (p: CapturePacket): number => ((p.data[38]! << 24) | (p.data[39]! << 16) | (p.data[40]! << 8) | p.data[41]!) >>> 0;

interface Replayed { summary: ReplaySummary; packets: CapturePacket[]; bytes: Buffer }

async function replayed(rule: string, frames: readonly Frame[], opts: { hook?: Hook; engine?: ReplayEngine; seed?: number; maxHeld?: HoldLimits; rule?: Omit<RuleLineOptions, 'dev' | 'hook'> } = {}): Promise<Replayed> {
  return withDir(async (dir) => {
    await writeCapture(join(dir, 'in.pcap'), frames);
    const groups = parseRuleLine(rule, { dev: 'replay', hook: opts.hook ?? 'egress', ...opts.rule }).groups;
    const output = join(dir, 'out.pcapng');
    const summary = await replayCapture({ groups, seed: opts.seed ?? 1, engine: opts.engine ?? 'jit', input: join(dir, 'in.pcap'), output, maxHeld: opts.maxHeld });
    const { packets } = await readAllPackets(output);
    return { summary, packets, bytes: readFileSync(output) };
  });
}

function assertTimeOrdered(packets: readonly CapturePacket[]): void {
  for (let i = 1; i < packets.length; i++) assert.ok(tOf(packets[i]!) >= tOf(packets[i - 1]!), `packet ${i} is earlier than packet ${i - 1}`);
}

test('delay 50ms shifts exactly the matching packets by 50 ms, at every hook, and the output stays time-ordered', async () => {
  // udp 9 at 0 ms, udp 7 at 10 ms, udp 9 at 20 ms, udp 7 at 100 ms.
  const frames = [{ frame: udp(1), tNs: 0 }, { frame: udp(2, 7), tNs: 10 * MS }, { frame: udp(3), tNs: 20 * MS }, { frame: udp(4, 7), tNs: 100 * MS }];
  for (const hook of ['egress', 'ingress', 'xdp'] as const) {
    const { packets, summary } = await replayed('udp.dstport == 9 => delay 50ms', frames, { hook });
    assert.deepEqual(packets.map(ipId), [2, 1, 3, 4], hook);
    assert.deepEqual(packets.map(tOf), [10 * MS, 50 * MS, 70 * MS, 100 * MS], hook);
    for (const p of packets) assert.deepEqual(p.data, frames[ipId(p) - 1]!.frame, `${hook}: bytes kept`);
    assert.equal(packets[1]!.comment, 'rule-1: delayed 50.000 ms');
    assert.equal(packets[0]!.comment, undefined);
    assert.equal(summary.packetsOut, 4);
    assert.equal(summary.changed, 0);
    assert.equal(summary.held?.delayed, 2);
    assert.equal(summary.rules[0]!.delayed, 2);
    assert.equal(summary.rules[0]!.matched, 2);
    assert.match(formatSummaryTable(summary).join('\n'), /held: 2 delayed, 0 reordered/);
  }
  // Held at the end of the capture: written at its release time all the same.
  const tail = await replayed('udp => delay 50ms', [{ frame: udp(1, 7), tNs: 0 }, { frame: udp(2), tNs: 5 * MS }]);
  assert.deepEqual(tail.packets.map(tOf), [50 * MS, 55 * MS]);
});

test('delay with set: the packet leaves changed and late, with one comment for both', async () => {
  const { packets, summary } = await replayed('udp => set ip.ttl = 3, delay 20ms', [{ frame: udp(1), tNs: 0 }, { frame: seg(1, 5), tNs: 1 * MS }]);
  assert.deepEqual(packets.map(tOf), [1 * MS, 20 * MS]);
  assert.equal(packets[1]!.data[22], 3);
  assert.equal(summary.changed, 1);
  assert.equal(summary.rules[0]!.changed, 1);
  assert.match(packets[1]!.comment ?? '', /^rule-1: ip\.ttl .*; rule-1: delayed 20\.000 ms$/);
});

const steady = (n: number): Frame[] => Array.from({ length: n }, (_, i) => ({ frame: udp(i + 1), tNs: i * MS }));
const delaysMs = (r: Replayed, frames: readonly Frame[]): number[] => r.packets.map((p) => (tOf(p) - frames[ipId(p) - 1]!.tNs) / MS);

test('delay 50ms jitter 10ms (uniform) stays within 40..60 ms and varies; the output stays time-ordered', async () => {
  const frames = steady(300);
  const r = await replayed('udp => delay 50ms jitter 10ms', frames);
  assert.equal(r.packets.length, 300);
  const d = delaysMs(r, frames);
  for (const x of d) assert.ok(x >= 40 && x <= 60, `${x} ms`);
  assert.ok(Math.max(...d) - Math.min(...d) > 15, 'the jitter spreads the delays');
  assertTimeOrdered(r.packets);
  assert.notDeepEqual(r.packets.map(ipId), frames.map((_, i) => i + 1), 'jitter of ±10 ms reorders packets 1 ms apart');
});

test('normal and pareto jitter: mean and spread as asked, over 3000 packets with a fixed seed', async () => {
  const frames = steady(3000);
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const sd = (a: number[]) => Math.sqrt(mean(a.map((x) => (x - mean(a)) ** 2)));
  const normal = delaysMs(await replayed('udp => delay 50ms jitter 10ms distribution normal', frames, { seed: 7 }), frames);
  assert.ok(Math.abs(mean(normal) - 50) < 1, `normal mean ${mean(normal)}`);
  assert.ok(sd(normal) > 9 && sd(normal) < 11, `normal sd ${sd(normal)}`);
  assert.ok(normal.some((x) => x < 30) && normal.some((x) => x > 70), 'normal tails beyond two standard deviations');
  const pareto = delaysMs(await replayed('udp => delay 50ms jitter 10ms distribution pareto', frames, { seed: 7 }), frames);
  assert.ok(Math.abs(mean(pareto) - 50) < 1.5, `pareto mean ${mean(pareto)}`);
  // Pareto of shape 3 shifted to mean 50, sd 10: never below 50 - 0.5·scale (scale = 20/√3).
  const floor = 50 - 0.5 * (20 / Math.sqrt(3));
  for (const x of pareto) assert.ok(x >= floor - 1e-6, `${x} ms below the floor ${floor}`);
  assert.ok(Math.max(...pareto) > 80, 'a heavy tail');
});

test('reorder by 2: the PSH segment leaves right after the next 2 packets of its own connection (either direction); others do not count', async () => {
  const frames: Frame[] = [
    { frame: seg(1, 1000, PSH_ACK), tNs: 0 },
    { frame: seg(2, 5000), tNs: 1 * MS },
    { frame: seg(1, 9000, 0x10, true), tNs: 2 * MS },
    { frame: seg(2, 5100), tNs: 3 * MS },
    { frame: seg(1, 1100), tNs: 4 * MS },
    { frame: seg(1, 1200), tNs: 5 * MS },
  ];
  const r = await replayed('tcp.flags.push => reorder by 2', frames);
  assert.deepEqual(r.packets.map(tcpSeq), [5000, 9000, 5100, 1100, 1000, 1200]);
  assert.deepEqual(r.packets.map(tOf), [1, 2, 3, 4, 4, 5].map((x) => x * MS));
  assert.deepEqual(r.packets[4]!.data, frames[0]!.frame);
  assert.equal(r.packets[4]!.comment, 'rule-1: reordered: overtaken by 2 packets');
  assert.equal(r.summary.held?.reordered, 1);
  assert.equal(r.summary.held?.overtaken, 1);
  // Two followers; once the held packet left, its connection's HELD_MAP count is 0 again and 1200 is none.
  assert.equal(r.summary.held?.followers, 2);
  assert.equal(r.summary.rules[0]!.reordered, 1);
});

test('reorder with no follower leaves by its timeout, at its release time; at the end of the capture too', async () => {
  const frames: Frame[] = [
    { frame: seg(1, 1000, PSH_ACK), tNs: 0 },
    { frame: seg(2, 5000), tNs: 10 * MS },
    { frame: seg(2, 5100), tNs: 20 * MS },
    { frame: seg(2, 5200), tNs: 40 * MS },
    { frame: seg(3, 7000, PSH_ACK), tNs: 50 * MS },
  ];
  const r = await replayed('tcp.flags.push => reorder timeout 30ms', frames);
  assert.deepEqual(r.packets.map(tcpSeq), [5000, 5100, 1000, 5200, 7000]);
  assert.deepEqual(r.packets.map(tOf), [10, 20, 30, 40, 80].map((x) => x * MS));
  assert.equal(r.packets[2]!.comment, 'rule-1: reordered: released by its 30ms timeout');
  assert.equal(r.summary.held?.timedOut, 2);
  assert.equal(r.summary.held?.followers, 0);
});

test('over the hold limit: packets go on at once, counted, and a reorder packet leaves its connection\'s count', async () => {
  const limits = { packets: 1, bytes: 1 << 20 };
  const d = await replayed('udp => delay 50ms', steady(3), { maxHeld: limits });
  assert.deepEqual(d.packets.map(ipId), [2, 3, 1]);
  assert.equal(d.summary.held?.overLimit, 2);
  assert.equal(d.summary.rules[0]!.overLimit, 2);
  assert.equal(d.packets[0]!.comment, 'rule-1: not delayed: over the hold limit');
  const frames: Frame[] = [
    { frame: seg(1, 1000, PSH_ACK), tNs: 0 },
    { frame: seg(1, 1100, PSH_ACK), tNs: 1 * MS },
    { frame: seg(1, 1200), tNs: 2 * MS },
    { frame: seg(1, 1300), tNs: 3 * MS },
  ];
  const r = await replayed('tcp.flags.push => reorder', frames, { maxHeld: limits });
  assert.deepEqual(r.packets.map(tcpSeq), [1100, 1200, 1000, 1300]);
  assert.equal(r.summary.held?.overLimit, 1);
  // 1200 follows; had 1100 stayed on the count, 1300 would have followed too.
  assert.equal(r.summary.held?.followers, 1);
});

test('held packets keep their bytes when the reader moves on (a capture larger than its read buffer)', async () => {
  // 4000 frames of 1442 bytes: about 5.8 MB, several refills of the reader's buffer while packets are held.
  const frames = Array.from({ length: 4000 }, (_, i) => ({
    frame: buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2', id: i + 1 }, l4: { kind: 'udp', sport: 5000, dport: 9, payload: new Uint8Array(1400).fill(i & 0xff) } }).frame,
    tNs: i * MS,
  }));
  const r = await replayed('udp => delay 5ms jitter 2ms', frames);
  assert.equal(r.summary.held?.delayed, 4000);
  assert.equal(r.summary.changed, 0);
  for (const p of r.packets) assert.deepEqual(p.data, frames[ipId(p) - 1]!.frame);
});

const mixed = (): Frame[] => {
  const out: Frame[] = [];
  for (let i = 0; i < 200; i++) {
    out.push({ frame: seg(1 + (i % 3), 1000 + i * 100, i % 7 === 0 ? PSH_ACK : 0x10), tNs: i * MS });
    if (i % 5 === 0) out.push({ frame: udp(i + 1), tNs: i * MS + 500_000 });
  }
  return out;
};
const HOLD_RULES = [
  'udp => delay 5ms jitter 3ms',
  'tcp.flags.push => reorder by 2 timeout 4ms',
];

test('same seed, same bytes; another seed, other bytes (jitter); interp = jit', async () => {
  const frames = mixed();
  for (const rule of HOLD_RULES) {
    const a = await replayed(rule, frames, { seed: 42 });
    const b = await replayed(rule, frames, { seed: 42 });
    assert.ok(a.bytes.equals(b.bytes), `${rule}: same seed, same bytes`);
    const interp = await replayed(rule, frames, { seed: 42, engine: 'interp' });
    assert.ok(interp.bytes.equals(a.bytes), `${rule}: interp = jit`);
    assertTimeOrdered(a.packets);
  }
  const a = await replayed(HOLD_RULES[0]!, frames, { seed: 42 });
  const c = await replayed(HOLD_RULES[0]!, frames, { seed: 43 });
  assert.ok(!a.bytes.equals(c.bytes), 'another seed draws other delays');
});

test('uncountHeld takes one off a connection\'s count and deletes it at 0', () => {
  const map = createMap({ type: 'hash', keySize: 40, valueSize: 8, maxEntries: 4, name: 'nm_held' });
  const key = new Uint8Array(40).fill(3);
  const two = new Uint8Array(8);
  two[0] = 2;
  map.update(key, two);
  uncountHeld(map, key);
  assert.equal(map.lookup(key)?.[0], 1);
  uncountHeld(map, key);
  assert.equal(map.lookup(key), undefined);
  uncountHeld(map, key);
  assert.equal(map.lookup(key), undefined);
});

kernelTest('delay and reorder: --engine kernel writes the same bytes as jit and interp, at every hook', async () => {
  const frames = mixed();
  for (const rule of HOLD_RULES) {
    for (const hook of ['egress', 'ingress', 'xdp'] as const) {
      const jit = await replayed(rule, frames, { seed: 9, hook });
      const kernel = await replayed(rule, frames, { seed: 9, hook, engine: 'kernel' });
      assert.ok(jit.summary.held!.delayed + jit.summary.held!.reordered > 10, `${rule}: holds something`);
      assert.ok(kernel.bytes.equals(jit.bytes), `${rule} at ${hook}: kernel = jit`);
      assert.deepEqual(kernel.summary.rules, jit.summary.rules);
      assert.deepEqual(kernel.summary.held, jit.summary.held);
    }
  }
});

test('netmangle replay \'tcp.flags.push => reorder\': tshark reads the reordered sequence', async () => {
  await withDir(async (dir) => {
    const frames: Frame[] = [
      { frame: seg(1, 1000), tNs: 0 },
      { frame: seg(1, 1100, PSH_ACK), tNs: 1 * MS },
      { frame: seg(1, 1200), tNs: 2 * MS },
      { frame: seg(1, 1300), tNs: 3 * MS },
    ];
    await writeCapture(join(dir, 'in.pcap'), frames);
    const out = join(dir, 'out.pcap');
    const r = spawnSync(bin, ['replay', 'tcp.flags.push => reorder', join(dir, 'in.pcap'), '--hook', 'egress', '-o', out, '--seed', '1'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /rule\s+hook\s+seen\s+matched\s+changed\s+dropped\s+delayed\s+reordered/);
    assert.match(r.stdout, /held: 0 delayed, 1 reordered \(1 overtaken, 0 by timeout\)/);
    const t = spawnSync('tshark', ['-r', out, '-o', 'tcp.relative_sequence_numbers:FALSE', '-T', 'fields', '-e', 'frame.time_relative', '-e', 'tcp.seq'], { encoding: 'utf8' });
    assert.equal(t.status, 0, t.stderr);
    const rows = t.stdout.trim().split('\n').map((l) => l.split('\t'));
    assert.deepEqual(rows.map((x) => Number(x[1])), [1000, 1200, 1100, 1300]);
    assert.deepEqual(rows.map((x) => Math.round(Number(x[0]) * 1000)), [0, 2, 2, 3]);
  });
});

test('xdp then ingress: a packet held at XDP meets the ingress rules when it leaves, on the clock of its release', async () => {
  await withDir(async (dir) => {
    writeFileSync(join(dir, 'rules.yaml'), [
      'dev: eth0',
      'rules:',
      '  - name: late',
      '    hook: ingress',
      '    rule: udp.dstport == 9 => set ip.ttl = 3, delay 5ms',
      '  - name: early',
      '    hook: xdp',
      '    rule: udp => delay 20ms',
    ].join('\n'));
    const groups = selectGroups(loadRulesFile(join(dir, 'rules.yaml')).groups);
    const frames = [{ frame: udp(1), tNs: 0 }, { frame: udp(2, 7), tNs: 1 * MS }, { frame: seg(1, 1000), tNs: 30 * MS }];
    await writeCapture(join(dir, 'in.pcap'), frames);
    const output = join(dir, 'out.pcapng');
    const s = await replayCapture({ groups, seed: 1, engine: 'jit', input: join(dir, 'in.pcap'), output });
    const { packets } = await readAllPackets(output);
    // udp 7: 20 ms at xdp (leaves at 21); udp 9: 20 ms at xdp, then 5 ms at ingress (leaves at 25), its TTL set.
    assert.deepEqual(packets.map(tOf), [21, 25, 30].map((x) => x * MS));
    assert.deepEqual(packets.slice(0, 2).map(ipId), [2, 1]);
    assert.equal(packets[1]!.data[22], 3);
    assert.equal(packets[1]!.comment?.split('; ').slice(1).join('; '), 'early: delayed 20.000 ms; late: delayed 5.000 ms');
    assert.equal(s.held?.delayed, 3);
    assert.equal(s.changed, 1);
    assert.equal(s.rules.find((r) => r.name === 'late')!.changed, 1);
  });
});

test('xdp reorder, then an ingress delay of its follower: the follower still frees the held packet as it goes by XDP', async () => {
  await withDir(async (dir) => {
    writeFileSync(join(dir, 'rules.yaml'), [
      'dev: eth0',
      'rules:',
      '  - name: held',
      '    hook: xdp',
      '    rule: ip.id == 1 => reorder by 1',
      '  - name: later',
      '    hook: ingress',
      '    rule: ip.id == 2 => delay 10ms',
    ].join('\n'));
    const groups = selectGroups(loadRulesFile(join(dir, 'rules.yaml')).groups);
    await writeCapture(join(dir, 'in.pcap'), [{ frame: udp(1), tNs: 0 }, { frame: udp(2), tNs: 1 * MS }, { frame: udp(3), tNs: 30 * MS }]);
    const output = join(dir, 'out.pcapng');
    await replayCapture({ groups, seed: 1, engine: 'jit', input: join(dir, 'in.pcap'), output });
    const { packets } = await readAllPackets(output);
    // Live, id 2 passes XDP at 1 ms (freeing id 1 there) and is then held 10 ms at ingress.
    assert.deepEqual(packets.map((p) => [ipId(p), tOf(p) / MS]), [[1, 1], [2, 11], [3, 30]]);
  });
});

test('netmangle replay --max-held: packets beyond it go on at once; refused for rules that hold nothing or a bad limit', async () => {
  await withDir(async (dir) => {
    await writeCapture(join(dir, 'in.pcap'), steady(3));
    const run = (args: string[]) => spawnSync(bin, ['replay', ...args], { encoding: 'utf8' });
    const r = run(['udp => delay 50ms', join(dir, 'in.pcap'), '--hook', 'egress', '-o', join(dir, 'out.pcap'), '--max-held', '1', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const summary = JSON.parse(r.stdout) as ReplaySummary;
    assert.equal(summary.held?.overLimit, 2);
    assert.deepEqual(summary.held?.limits, { packets: 1, bytes: 64 * 1024 * 1024 });
    const none = run(['udp => drop', join(dir, 'in.pcap'), '--hook', 'egress', '-o', join(dir, 'out.pcap'), '--max-held', '1']);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /^netmangle: --max-held applies to delay and reorder rules/);
    const bad = run(['udp => delay 5ms', join(dir, 'in.pcap'), '--hook', 'egress', '-o', join(dir, 'out.pcap'), '--max-held', 'lots']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^netmangle: --max-held lots: /);
  });
});
