/**
 * Triggers: --after, --first beside --every and --probability, and --per-connection (counts
 * kept per connection, both directions as one). Each case runs in the kernel (test run) and
 * in the VM, which must agree byte for byte and verdict for verdict (support.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { connectionMapBytesOf, connectionMemoryNote } from '../../src/compiler/index.js';
import { UsageError } from '../../src/errors.js';
import { loadCompiled } from '../../src/live/index.js';
import { parseRuleLine, loadRulesText } from '../../src/rules/load.js';
import { buildPacket, type PacketSpec } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { compileRules, faultRule, runEverywhere } from './support.js';

const TCP = (sport: number, dport: number, flags: number, src = '198.18.0.1', dst = '198.18.0.2'): PacketSpec => ({
  l3: { kind: 'ipv4', src, dst, tos: 0 }, l4: { kind: 'tcp', sport, dport, flags, payload: new Uint8Array(10) },
});
const PSH = 0x018, ACK = 0x010;

/** Which frames the rule changed (their bytes differ from what went in). */
function changed(frames: Uint8Array[], outcomes: Array<{ data: Uint8Array }>): number[] {
  return frames.flatMap((f, i) => (Buffer.compare(Buffer.from(f), Buffer.from(outcomes[i]!.data)) === 0 ? [] : [i]));
}

test('trigger options are checked in both forms', () => {
  const r = parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', after: '3', first: 2, every: 2, perConnection: true, connections: '100' }).groups[0]!.rules[0]!;
  assert.deepEqual([r.after, r.first, r.every, r.perConnection, r.connections], [3, 2, 2, true, 100]);
  assert.throws(() => parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', perConnection: true }), /--per-connection counts packets per connection for --first, --after and --every, and none is given/);
  assert.throws(() => parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', connections: 5 }), /--connections sizes the map of --per-connection/);
  assert.throws(() => parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', first: '0' }), /--first must be a whole number from 1/);
  assert.throws(() => parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', after: '-1' }), /--after must be a whole number from 0/);
  const f = loadRulesText('dev: d\nhook: egress\nrules:\n  - rule: tcp.flags.push => set ip.dsfield.dscp = 46\n    first: 1\n    per-connection: true\n    connections: 1000\n', 'r.yaml');
  const fr = f.groups[0]!.rules[0]!;
  assert.deepEqual([fr.first, fr.perConnection, fr.connections], [1, true, 1000]);
  assert.throws(() => loadRulesText('dev: d\nhook: egress\nrules:\n  - rule: tcp => drop\n    per-connection: true\n', 'r.yaml'), /r\.yaml:\d+: rules\[0\]\.per-connection: counts packets per connection/);
  assert.throws(() => loadRulesText('dev: d\nhook: egress\nrules:\n  - rule: tcp => drop\n    first: 0\n', 'r.yaml'), /rules\[0\]\.first: must be a whole number from 1/);
});

kernelTest('--after N --every M --first K: act on the (after + every·k)th matching packets, k ≤ first (kernel = VM)', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const rule = faultRule('udp => set ip.ttl = 1', hook, { after: 3, every: 2, first: 3 });
    const frames = Array.from({ length: 14 }, (_, i) => buildPacket(i % 3 === 2 ? TCP(1, 2, ACK) : { l3: { kind: 'ipv4' }, l4: { kind: 'udp', sport: i } }).frame);
    const { outcomes, counters } = runEverywhere(compileRules(hook, [rule]), frames);
    // UDP frames are 0,1,3,4,6,7,9,10,12,13: matching numbers 1..10; after 3 → m = n-3; every 2 → m = 2, 4, 6 (n = 5, 7, 9); first 3 → all three.
    assert.deepEqual(changed(frames, outcomes), [6, 9, 12], hook);
    assert.equal(counters[0]!.matched, 10);
    assert.equal(counters[0]!.acted, 3);
  }
});

kernelTest('--first alone, and --after alone', () => {
  const frames = Array.from({ length: 6 }, (_, i) => buildPacket({ l3: { kind: 'ipv4', id: i }, l4: { kind: 'udp' } }).frame);
  const first = runEverywhere(compileRules('xdp', [faultRule('udp => set ip.ttl = 9', 'xdp', { first: 2 })]), frames);
  assert.deepEqual(changed(frames, first.outcomes), [0, 1]);
  const after = runEverywhere(compileRules('xdp', [faultRule('udp => drop', 'xdp', { after: 4 })]), frames);
  assert.deepEqual(after.outcomes.map((o) => o.retval), [2, 2, 2, 2, 1, 1]);
  // Two rules keep two counts.
  const two = runEverywhere(compileRules('xdp', [
    faultRule('udp => set ip.ttl = 9', 'xdp', { first: 1, name: 'a' }),
    faultRule('udp => set ip.id = 7', 'xdp', { after: 5, name: 'b' }),
  ]), frames);
  assert.deepEqual(changed(frames, two.outcomes), [0, 5]);
});

kernelTest("the article's trigger: the first PSH segment of every connection, both directions counted as one (kernel = VM)", () => {
  for (const hook of ['ingress', 'egress', 'xdp'] as const) {
    const rule = faultRule('tcp.flags.push => set ip.dsfield.dscp = 46', hook, { first: 1, perConnection: true });
    const specs: PacketSpec[] = [
      TCP(40000, 80, ACK), // no PSH: not matched
      TCP(40000, 80, PSH), // conn A, first PSH → acts
      TCP(80, 40000, PSH, '198.18.0.2', '198.18.0.1'), // conn A, reply direction: second PSH of A → no
      TCP(40001, 80, PSH), // conn B → acts
      TCP(40000, 80, PSH), // A again → no
      TCP(40001, 80, PSH, '198.18.0.1', '198.18.0.3'), // another host: conn C → acts
      { l3: { kind: 'ipv6', src: '2001:db8::2', dst: '2001:db8::1' }, l4: { kind: 'tcp', sport: 443, dport: 50000, flags: PSH } }, // D (IPv6) → no DSCP field in IPv6 but counted
      TCP(80, 40001, PSH, '198.18.0.2', '198.18.0.1'), // B reply → no
      TCP(80, 40002, PSH, '198.18.0.2', '198.18.0.1'), // E, first seen from the server side → acts
    ];
    const frames = specs.map((s) => buildPacket(s).frame);
    const { outcomes, counters } = runEverywhere(compileRules(hook, [rule]), frames);
    assert.deepEqual(changed(frames, outcomes), [1, 3, 5, 8], hook);
    for (const i of [1, 3, 5, 8]) assert.equal(outcomes[i]!.data[15]! >> 2, 46, `${hook} packet ${i}: DSCP`);
    assert.equal(counters[0]!.matched, 8);
    assert.equal(counters[0]!.acted, 5, 'the IPv6 connection acted too (its first PSH), with no field to set');
  }
});

kernelTest('per connection: --every and --after per UDP flow, ICMP echo id as the connection, IPv6 ordering', () => {
  const udp = (sport: number, dport: number, src = '198.18.0.1', dst = '198.18.0.2'): Uint8Array =>
    buildPacket({ l3: { kind: 'ipv4', src, dst }, l4: { kind: 'udp', sport, dport } }).frame;
  const rule = faultRule('udp or icmp or icmpv6 => drop', 'ingress', { every: 2, perConnection: true });
  const frames = [
    udp(1000, 53), udp(2000, 53), udp(53, 1000, '198.18.0.2', '198.18.0.1'), udp(2000, 53),
    buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.9' }, l4: { kind: 'icmp', type: 8, ident: 7 } }).frame,
    buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.9', dst: '198.18.0.1' }, l4: { kind: 'icmp', type: 0, ident: 7 } }).frame,
    buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.9' }, l4: { kind: 'icmp', type: 8, ident: 8 } }).frame,
    buildPacket({ l3: { kind: 'ipv6', src: '2001:db8::1:0', dst: '2001:db8::2' }, l4: { kind: 'udp', sport: 5, dport: 6 } }).frame,
    buildPacket({ l3: { kind: 'ipv6', src: '2001:db8::2', dst: '2001:db8::1:0' }, l4: { kind: 'udp', sport: 6, dport: 5 } }).frame,
    buildPacket({ l3: { kind: 'ipv6', src: '2001:db8::2', dst: '2001:db8::1:0' }, l4: { kind: 'udp', sport: 6, dport: 7 } }).frame,
  ];
  const { outcomes } = runEverywhere(compileRules('ingress', [rule]), frames);
  const SHOT = 2;
  assert.deepEqual(outcomes.map((o) => o.retval === SHOT), [false, false, true, true, false, true, false, false, true, false]);
});

kernelTest('per connection: a full map forgets the oldest connection, which starts again', () => {
  const rule = faultRule('udp => drop', 'xdp', { first: 1, perConnection: true, connections: 2 });
  const udp = (sport: number): Uint8Array => buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', sport, dport: 9 } }).frame;
  // Flows 1, 2, then 1 again (known); in the VM the LRU is exact. Only agreement and the known
  // flow's second packet passing are asserted: the kernel's LRU evicts approximately.
  const { outcomes } = runEverywhere(compileRules('xdp', [rule]), [udp(1), udp(2), udp(1)]);
  assert.deepEqual(outcomes.map((o) => o.retval), [1, 1, 2]);
});

test('--limit, --for and --start-after are checked, then compiled with the time map', async () => {
  const { compileRules: compile } = await import('./support.js');
  const { CompileError } = await import('../../src/compiler/index.js');
  const r = parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', limit: '100/s', for: '10m', startAfter: '1m30s' }).groups[0]!.rules[0]!;
  assert.deepEqual([r.limit, r.forNs, r.startAfterNs], [{ packets: 100, intervalNs: 1e9, text: '100/s' }, 600e9, 90e9]);
  assert.throws(() => parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', limit: '100' }), /--limit must be a rate like 100\/s/);
  assert.throws(() => parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', for: 'soon' }), /--for must be a duration/);
  for (const opts of [{ limit: '5/s' }, { for: '1s' }, { startAfter: '1s' }]) {
    const rule = parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp', ...opts }).groups[0]!.rules[0]!;
    assert.ok(compile('xdp', [rule]).maps.some((m) => m.name === 'nm_time'));
  }
  assert.ok(!compile('xdp', [parseRuleLine('udp => drop', { dev: 'd', hook: 'xdp' }).groups[0]!.rules[0]!]).maps.some((m) => m.name === 'nm_time'));
  void CompileError;
});

kernelTest('100 --per-connection rules in one program: one map for all (not one per rule), each rule counting on its own (kernel = VM)', () => {
  // Rule i acts on the (i + 1)th matching packet of each connection only; all match every TCP packet.
  const rules = Array.from({ length: 100 }, (_, i) => ({ ...faultRule('tcp => set ip.ttl = ip.ttl + 1', 'egress', { after: i, first: 1, perConnection: true }), name: `r${i}` }));
  const compiled = compileRules('egress', rules);
  assert.deepEqual(compiled.maps.filter((m) => m.type === 'lru_hash').map((m) => [m.name, m.valueSize, m.maxEntries]), [['nm_conn', 800, 65536]]);
  assert.ok(compiled.maps.length <= 5, `${compiled.maps.length} maps`);
  // Connection A: 3 packets (both directions), B: 1 packet.
  const frames = [TCP(40000, 80, ACK), TCP(80, 40000, ACK, '198.18.0.2', '198.18.0.1'), TCP(40001, 80, ACK), TCP(40000, 80, ACK)].map((s) => buildPacket(s).frame);
  const { outcomes, counters } = runEverywhere(compiled, frames);
  // Each packet is the nth of its connection and so gets exactly one rule's +1.
  const ttl = (f: Uint8Array): number => f[14 + 8]!;
  assert.deepEqual(outcomes.map((o, i) => ttl(o.data) - ttl(frames[i]!)), [1, 1, 1, 1]);
  assert.deepEqual(counters.slice(0, 4).map((c) => c.acted), [2, 1, 1, 0]);
  assert.ok(counters.every((c) => c.matched === 4));
});

test('--connections beyond 1048576 is refused with the memory it would lock (exit 2); the program says a large map', () => {
  for (const load of [
    () => parseRuleLine('tcp => drop', { dev: 'd', hook: 'egress', first: 1, perConnection: true, connections: '16777216' }),
    () => loadRulesText('dev: d\nhook: egress\nrules:\n  - rule: tcp => drop\n    first: 1\n    per-connection: true\n    connections: 16777216\n', 'r.yaml'),
  ]) {
    assert.throws(load, (err: unknown) => {
      assert.ok(err instanceof UsageError);
      assert.equal(err.exitCode, 2);
      assert.match(err.message, /connections:? must be at most 1048576, not 16777216: that many connections would lock about 1\.9 GB of kernel memory \(1048576 lock about 117 MB\)$/);
      return true;
    });
  }
  const big = faultRule('tcp => drop', 'egress', { first: 1, perConnection: true, connections: 1 << 20 });
  assert.equal(connectionMemoryNote(compileRules('egress', [big])), 'the per-connection map of egress of x (1048576 connections, 1 rule) locks about 117 MB of kernel memory');
  assert.equal(connectionMemoryNote(compileRules('egress', [faultRule('tcp => drop', 'egress', { first: 1, perConnection: true })])), undefined);
});

kernelTest('the memory said for the per-connection map is what the kernel locks for it (memlock in fdinfo)', () => {
  const rules = [1, 2, 3].map((i) => ({ ...faultRule('tcp => drop', 'egress', { after: i, first: 1, perConnection: true, connections: 200000 }), name: `r${i}` }));
  const compiled = compileRules('egress', rules);
  const loaded = loadCompiled(compiled);
  try {
    const fdinfo = readFileSync(`/proc/self/fdinfo/${loaded.maps.nm_conn!.fd}`, 'utf8');
    const memlock = Number(/^memlock:\s+(\d+)/m.exec(fdinfo)?.[1]);
    const said = connectionMapBytesOf(compiled)!;
    assert.ok(Math.abs(memlock - said) / memlock < 0.01, `kernel ${memlock}, said ${said}`);
  } finally {
    loaded.close();
  }
});
