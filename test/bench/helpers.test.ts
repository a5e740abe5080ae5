/** The bench's pure helpers: statistics, Markdown, test frames, generated C. Figures are never tested. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { interleave, median, medianRatio, spread } from '../../bench/lib/stats.js';
import { int, ratio, sig, table } from '../../bench/lib/report.js';
import { checksum, icmpEchoFrame, tcpFrame, udpFrame } from '../../bench/lib/packets.js';
import { emptyChainSource, portChainSource } from '../../bench/lib/anchors.js';
import { rulePorts } from '../../bench/lib/rules.js';

test('median of odd and even counts, and of nothing', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(median([])));
  const input = [5, 1, 4];
  median(input);
  assert.deepEqual(input, [5, 1, 4], 'median must not sort its argument in place');
});

test('medianRatio pairs rounds: a drift that scales both sides cancels', () => {
  // The machine gets twice as slow half-way; netmangle is 0.8 of clang in every round.
  const anchor = [10, 10, 20, 20, 20];
  const candidate = anchor.map((x) => x * 0.8);
  assert.ok(Math.abs(medianRatio(candidate, anchor) - 0.8) < 1e-12);
  assert.throws(() => medianRatio([1], [1, 2]), /1 values against 2/);
});

test('spread is range over median', () => {
  assert.equal(spread([9, 10, 11]), 0.2);
});

test('interleave alternates the order of variants between rounds', async () => {
  const order: string[] = [];
  let n = 0;
  const out = await interleave(3, [
    ['a', () => { order.push('a'); return n++; }],
    ['b', async () => { order.push('b'); return n++; }],
  ] as const);
  assert.deepEqual(order, ['a', 'b', 'b', 'a', 'a', 'b']);
  assert.deepEqual(out, { a: [0, 3, 4], b: [1, 2, 5] });
});

test('Markdown table: alignment row, escaped pipes', () => {
  const t = table(['x', 'y'], [['a|b', '1']]);
  assert.equal(t, '| x | y |\n| --- | ---: |\n| a\\|b | 1 |');
  assert.equal(table(['x'], [], ['r']), '| x |\n| ---: |');
});

test('number formats', () => {
  assert.equal(sig(123.456), '123');
  assert.equal(sig(1.23456), '1.23');
  assert.equal(sig(0.012345), '0.0123');
  assert.equal(sig(Number.NaN), 'n/a');
  assert.equal(ratio(0.876), '0.88×');
  assert.equal(int(1234567.4), '1 234 567');
  assert.equal(int(999), '999');
});

/** A correct Internet checksum over a region that includes its checksum field sums to 0xffff (checksum() 0). */
function l4Verifies(frame: Uint8Array): boolean {
  const proto = frame[23]!;
  const l4len = frame.length - 34;
  // Pseudo-header words: 198.18.0.1, 198.18.0.2, protocol, length.
  const pseudo = proto === 1 ? 0 : 0xc612 + 0x0001 + 0xc612 + 0x0002 + proto + l4len;
  return checksum(frame, 34, frame.length, pseudo) === 0;
}

test('test frames carry correct IPv4 and L4 checksums', () => {
  for (const f of [tcpFrame(), tcpFrame({ payload: 11, flags: 0x18 }), udpFrame(), icmpEchoFrame(0), icmpEchoFrame(8)]) {
    assert.equal(checksum(f, 14, 34), 0, 'IPv4 header checksum');
    assert.ok(l4Verifies(f), `L4 checksum of a protocol ${f[23]} frame`);
  }
  const broken = tcpFrame();
  broken[40]! ^= 1;
  assert.ok(!l4Verifies(broken), 'a flipped bit must fail the check');
});

test('test frames have the sizes and fields the report names', () => {
  const ack = tcpFrame();
  assert.equal(ack.length, 54);
  assert.equal(ack[47], 0x10, 'ACK only');
  assert.equal((ack[36]! << 8) | ack[37]!, 5201);
  assert.equal(udpFrame().length, 60);
  const reply = icmpEchoFrame(0);
  assert.equal(reply.length, 98);
  assert.equal(reply[34], 0);
  assert.equal(icmpEchoFrame(8)[34], 8);
});

test('the generated chain has one tc program per port, none on 5201', () => {
  const ports = rulePorts(100);
  assert.equal(new Set(ports).size, 100);
  assert.ok(!ports.includes(5201));
  const src = portChainSource(ports);
  assert.equal(src.match(/^PORT_RULE\(/gm)?.length, 100);
  assert.match(src, /PORT_RULE\(port_rule_099, 20100\)/);
  assert.match(src, /return TC_ACT_UNSPEC;/);
});

test('the generated empty chain has distinct program names', () => {
  const src = emptyChainSource(64);
  const names = [...src.matchAll(/^EMPTY\((\w+)\)$/gm)].map((m) => m[1]);
  assert.equal(names.length, 64);
  assert.equal(new Set(names).size, 64);
});
