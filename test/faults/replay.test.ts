/**
 * The fault actions and timed triggers offline: replay writes duplicate's copies before the
 * original, cuts truncated frames, and runs limit / for on the capture's own clock.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createPcapWriter, readAllPackets } from '../../src/pcap/index.js';
import { replayCapture } from '../../src/replay/index.js';
import { parseRuleLine, type RuleLineOptions } from '../../src/rules/load.js';
import type { Hook } from '../../src/rules/ast.js';
import { buildPacket, checksumsValid } from '../helpers/packets.js';

const udp = (i: number) => buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2', id: i }, l4: { kind: 'udp', sport: 9, dport: 9, payload: new Uint8Array(200).fill(i & 0xff) } }).frame;
const tcp = buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x10 } }).frame;

async function replayed(rule: string, hook: Hook, opts: Omit<RuleLineOptions, 'dev' | 'hook'>, frames: Array<{ frame: Uint8Array; tsSec: number; tsNsec: number }>) {
  const dir = mkdtempSync(join(tmpdir(), 'nm-faults-replay-'));
  try {
    const w = createPcapWriter(join(dir, 'in.pcap'), { nanosecond: true });
    for (const f of frames) w.write({ data: f.frame, tsSec: f.tsSec, tsNsec: f.tsNsec });
    await w.close();
    const groups = parseRuleLine(rule, { dev: 'replay', hook, ...opts }).groups;
    const summary = await replayCapture({ groups, seed: 1, engine: 'jit', input: join(dir, 'in.pcap'), output: join(dir, 'out.pcap') });
    const { packets } = await readAllPackets(join(dir, 'out.pcap'));
    return { summary, packets };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('replay: duplicate 2 writes two copies before each matching packet, as the rule left it; others once', async () => {
  const frames = [udp(1), tcp, udp(2)].map((frame, i) => ({ frame, tsSec: 1_700_000_000, tsNsec: i * 1000 }));
  const { packets, summary } = await replayed('udp => set ip.ttl = 3, duplicate 2', 'egress', {}, frames);
  assert.equal(packets.length, 7);
  assert.equal(summary.packetsOut, 7);
  const ttl = packets.map((p) => p.data[22]);
  assert.deepEqual(ttl, [3, 3, 3, tcp[22], 3, 3, 3]);
  assert.deepEqual(packets[0]!.data, packets[2]!.data);
  assert.equal(packets[4]!.data[19], 2, 'the second datagram (IP id 2) and its copies');
  assert.deepEqual(packets[4]!.data, packets[6]!.data);
});

test('replay: truncate writes the cut frames, lengths and checksums fixed', async () => {
  const frames = [udp(1), udp(2)].map((frame, i) => ({ frame, tsSec: 1_700_000_000, tsNsec: i * 1000 }));
  const { packets } = await replayed('udp => truncate 80', 'ingress', {}, frames);
  assert.deepEqual(packets.map((p) => p.data.length), [80, 80]);
  for (const p of packets) assert.deepEqual(checksumsValid(p.data), { ipv4: true, l4: true });
});

test('replay: limit 10/s over 2 s of a packet per ms acts about 20 times; for 500ms acts on the first half second', async () => {
  const frames = Array.from({ length: 2000 }, (_, i) => ({ frame: udp(i), tsSec: 1_700_000_000 + Math.floor(i / 1000), tsNsec: (i % 1000) * 1_000_000 }));
  const limited = await replayed('udp => drop', 'xdp', { limit: '10/s' }, frames);
  assert.ok(limited.summary.dropped >= 20 && limited.summary.dropped <= 22, `${limited.summary.dropped} dropped`);
  const windowed = await replayed('udp => drop', 'xdp', { for: '500ms' }, frames);
  assert.equal(windowed.summary.dropped, 500);
  assert.equal(windowed.packets.length, 1500);
});

test('replay: reject writes the RST in place of the segment, in order', async () => {
  const syn = buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'tcp', sport: 40000, dport: 80, flags: 0x02, seq: 41 } }).frame;
  const frames = [udp(1), syn, udp(2)].map((frame, i) => ({ frame, tsSec: 1_700_000_000, tsNsec: i * 1000 }));
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const { packets } = await replayed('tcp.dstport == 80 => reject', hook, {}, frames);
    assert.equal(packets.length, 3);
    const rst = packets[1]!.data;
    assert.equal(rst.length, 54);
    assert.equal(rst[34 + 13], 0x14, `${hook}: RST|ACK`);
    assert.equal((rst[34] << 8) | rst[35]!, 80, 'from the port the SYN was sent to');
    assert.equal(((rst[34 + 8]! << 24) | (rst[34 + 9]! << 16) | (rst[34 + 10]! << 8) | rst[34 + 11]!) >>> 0, 42);
    assert.deepEqual(checksumsValid(rst), { ipv4: true, l4: true });
    assert.deepEqual(packets[0]!.data, frames[0]!.frame);
  }
});
