/**
 * Match semantics in the kernel: each condition compiled as `COND => drop` and run over every
 * packet shape at xdp and tc; the verdict must be `drop` exactly where the reference evaluator
 * says the condition holds, the packet must come back untouched, and the rule's counters must
 * count the matches.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Hook } from '../../src/rules/ast.js';
import { kernelTest } from '../helpers/kernel.js';
import { rule, run, verdictsAt, withRules } from './harness.js';
import { evalCond } from './reference-eval.js';
import { shapesFor } from './shapes.js';

/** Conditions for both hooks. */
const CONDITIONS: string[] = [
  // bare protocol names
  'eth', 'ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6', 'frame',
  'not (ip or ipv6)', '(tcp or udp) and ip.ttl == 64', 'not tcp and not udp',
  // every comparison operator, on the ends of a range
  'ip.ttl == 64', 'ip.ttl != 64', 'ip.ttl < 64', 'ip.ttl <= 64', 'ip.ttl > 63', 'ip.ttl >= 65', 'ip.ttl > 300', 'ipv6.hlim >= 255',
  '64 == ip.ttl', '100 > ip.ttl',
  // fields of every layer, constants past 2^31
  'tcp.dstport == 5201', 'tcp.srcport != 40000', 'tcp.seq == 0x11223344', 'tcp.seq > 0x80000000', 'tcp.ack < 0x55667789',
  'tcp.hdr_len == 40', 'ip.hdr_len > 20', 'ip.len > 60', 'ipv6.flow == 0x12345', 'ipv6.plen < 30', 'udp.length == 27',
  'ip.dsfield.dscp == 46', 'ipv6.tclass == 0x2e', 'ipv6.tclass.dscp == 11', 'icmp.type == 0', 'icmp.type == 8 and icmp.seq == 7',
  'icmpv6.type == 128', 'icmpv6.echo.identifier == 77', 'eth.type == 0x8100', 'ip.id == 0xfffe', 'ip.flags.df',
  'ip.flags.mf or ip.frag_offset > 0', 'ipv6.nxt == 44', 'ipv6.nxt == 0', 'udp and not udp.checksum == 0', 'udp.checksum == 0',
  // absent fields: the comparison is false, its negation true
  'not tcp.srcport == 40000', 'not ip.ttl != 64', 'not icmp.type == 8', 'tcp.srcport != 1',
  // bit tests
  'tcp.flags.ack', 'not tcp.flags.syn', 'tcp.flags.push', 'tcp.flags & 0x12', 'tcp.flags & 0x12 == 0x10', 'tcp.flags.syn or tcp.flags.fin',
  'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push)',
  // in, with ranges
  'ip.ttl in {1 2 57 100..200}', 'tcp.port in {1..1000 5000..6000}', 'udp.port in {53 123}', 'udp.dstport in {1..52}',
  'ip.ttl in {0..63}', 'ip.ttl in {64}', 'frame.len in {60..70 100..200}',
  // addresses: equality, CIDR, either-fields, sets
  'ip.src == 198.18.0.1', 'ip.src == 198.18.0.0/15', 'ip.dst == 198.18.0.8/29', 'ip.dst == 0.0.0.0/0', 'ip.src != 198.18.0.1',
  'ip.addr == 198.18.0.2', 'ip.addr != 198.18.0.2', 'ip.addr != 10.0.0.1', 'ip.src in {198.18.0.0/31 10.0.0.0/8}', 'ip.addr in {198.18.0.2 198.19.255.1}',
  'ipv6.src == 2001:db8::1', 'ipv6.dst == 2001:db8::/32', 'ipv6.src == 2001:db9::/16', 'ipv6.dst == 2001:db8::2/127', 'ipv6.dst == 2001:db8::3/128',
  'ipv6.addr == 2001:db8::2', 'ipv6.addr != 2001:db8::2', 'ipv6.addr != 2001:db8::99', 'ipv6.src != 2001:db8::/33',
  'eth.src == 02:00:00:00:00:01', 'eth.dst != 02:00:00:00:00:01', 'eth.dst == 02:00:00:00:00:02',
  'tcp.port == 5201', 'tcp.port != 5201', 'tcp.port != 40001', 'tcp.port != 1', 'udp.port == 40000',
  // frame.len
  'frame.len == 54', 'frame.len > 60', 'frame.len >= 100', 'frame.len < 40',
  // tcp.len: the payload length from the IP length field (options, extension headers, fragments, cut frames)
  'tcp.len == 0', 'tcp.len != 0', 'tcp.len > 8', 'tcp.len == 33', 'tcp.len == 7', 'tcp.len == 40', 'tcp.len', 'not tcp.len >= 0',
  'ipv6 and tcp.len == 8', 'tcp.flags.push and tcp.len > 20', 'tcp.len == 0 and tcp.flags.ack', 'tcp.len + tcp.hdr_len == 40', 'tcp.len in {7 10}',
  // arithmetic and functions in a match
  'ip.ttl + 1 == 65', 'ip.id * 2 > 4000', 'ip.ttl - 65 > 1000', 'tcp.seq / tcp.urgent_pointer == 0', 'tcp.seq % tcp.urgent_pointer == tcp.seq', 'ip.len / 2 == 20', 'ip.ttl >> 2 == 16',
  'ip.ttl << 1 == 128', '(ip.ttl ^ 0xff) == 191', 'min(ip.ttl, 60) == 60', 'max(ip.ttl, 100) == 100', 'tcp.srcport - tcp.dstport == 34799',
  'min(tcp.srcport, tcp.dstport) == 5201',
];

/** Conditions only XDP can evaluate (the tc hooks see no in-band VLAN tag). */
const XDP_CONDITIONS: string[] = [
  'vlan', 'vlan.id == 100', 'vlan.priority == 5', 'vlan.etype == 0x86dd', 'vlan.id == 4000 and vlan.dei', 'not vlan.id == 100', 'vlan and ip',
];

for (const hook of ['xdp', 'egress', 'ingress'] as Hook[]) {
  const conds = hook === 'xdp' ? [...CONDITIONS, ...XDP_CONDITIONS] : CONDITIONS;
  kernelTest(`${hook}: ${conds.length} conditions agree with the reference evaluator on every packet shape`, () => {
    const failures: string[] = [];
    let holds = 0;
    let fails = 0;
    for (const text of conds) {
      const r = rule(`${text} => drop`, hook);
      withRules(hook, [r], (p) => {
        let expectedMatches = 0;
        for (const [name, pkt] of shapesFor(hook)) {
          const want = evalCond(pkt.frame, r.match);
          const got = run(p, pkt.frame);
          const verdict = want ? verdictsAt(hook).drop : verdictsAt(hook).none;
          if (got.retval !== verdict) failures.push(`${text} on ${name}: returned ${got.retval}, the condition is ${want}`);
          if (Buffer.compare(got.data, pkt.frame) !== 0) failures.push(`${text} on ${name}: the packet changed`);
          if (want) expectedMatches++;
          if (want) holds++;
          else fails++;
        }
        const c = p.counters().rules[0]!;
        if (c.matched !== expectedMatches || c.acted !== expectedMatches || c.dropped !== expectedMatches) {
          failures.push(`${text}: counters ${JSON.stringify(c)}, expected ${expectedMatches} of each`);
        }
      });
    }
    assert.deepEqual(failures, []);
    // The table is only worth something if its conditions go both ways.
    assert.ok(holds > 300 && fails > 300, `${holds} true, ${fails} false`);
  }, { timeout: 300_000 });
}

/**
 * Conditions constant over the shapes, on purpose: every shape has an Ethernet header, a TTL
 * never exceeds 255, and every TCP shape has port 5201 on one side.
 */
const CONSTANT = new Set(['eth', 'frame', 'ip.ttl > 300', 'tcp.port != 5201']);

test('every other condition of the table holds on some shape and fails on another', () => {
  const constant: string[] = [];
  for (const text of [...CONDITIONS, ...XDP_CONDITIONS]) {
    const r = rule(`${text} => drop`, 'xdp');
    const results = shapesFor('xdp').map(([, pkt]) => evalCond(pkt.frame, r.match));
    if (results.every(Boolean) || !results.some(Boolean)) constant.push(text);
  }
  assert.deepEqual(constant, [...CONSTANT]);
});
