/**
 * Actions in the kernel: arithmetic and functions in `set`, several sets in one rule,
 * verdicts, several rules in order, checksum: keep, probability and every-N triggers, and the
 * counters. Deterministic rules are checked byte for byte against the reference
 * (evaluator + from-scratch checksums) over every packet shape.
 */
import assert from 'node:assert/strict';
import type { Action, FieldDef, Hook, Rule } from '../../src/rules/ast.js';
import { drawValue, nextState, probabilityThreshold, seedState } from '../../src/compiler/prng.js';
import { lookupField } from '../../src/rules/catalog.js';
import { kernelTest } from '../helpers/kernel.js';
import {
  buildPacket, checksumsValid, decode, diffHex, expectedAfterSets, readField, type BuiltPacket, type FieldWrite,
} from '../helpers/packets.js';
import { onCpu, rule, run, verdictsAt, withRules } from './harness.js';
import { Absent, evalCond, evalExpr } from './reference-eval.js';
import { shape, shapesFor } from './shapes.js';

const field = (name: string): FieldDef => lookupField(name)!;

/** What one rule does to a packet per the reference: the writes it makes and its verdict, or undefined when it does not match. */
function referenceRule(r: Rule, pkt: BuiltPacket): { writes: FieldWrite[]; final?: 'drop' | 'pass' } | undefined {
  if (!evalCond(pkt.frame, r.match)) return undefined;
  const writes: FieldWrite[] = [];
  const sets = r.actions.filter((a): a is Extract<Action, { kind: 'set' }> => a.kind === 'set');
  for (const s of sets) {
    try {
      if (s.value.kind === 'addr') {
        writes.push({ field: s.field, value: s.value.bytes });
      } else if (s.value.kind === 'field' && (s.value.field.width === 6 || s.value.field.width === 16)) {
        const d = decode(pkt.frame);
        const base = d.layers[s.value.field.layer as keyof typeof d.layers];
        if (base === undefined) return { writes: [] };
        writes.push({ field: s.field, value: pkt.frame.slice(base + s.value.field.offset, base + s.value.field.offset + s.value.field.width) });
      } else {
        writes.push({ field: s.field, value: evalExpr(pkt.frame, s.value) });
      }
    } catch (err) {
      // A value that reads an absent field: the rule matched, but none of its sets happen.
      if (err instanceof Absent) return { writes: [] };
      throw err;
    }
  }
  const final = r.actions.find((a) => a.kind === 'drop' || a.kind === 'pass')?.kind as 'drop' | 'pass' | undefined;
  return { writes, final };
}

/** Loads one rule and checks verdict and bytes on every shape against the reference. */
function checkRuleEverywhere(hook: Hook, text: string): { matched: number; changed: number } {
  const r = rule(text, hook);
  const failures: string[] = [];
  let matched = 0;
  let changed = 0;
  withRules(hook, [r], (p) => {
    for (const [name, pkt] of shapesFor(hook)) {
      const ref = referenceRule(r, pkt);
      const want = ref ? expectedAfterSets(pkt, ref.writes) : pkt.frame;
      const verdict = ref?.final ? verdictsAt(hook)[ref.final] : verdictsAt(hook).none;
      const got = run(p, pkt.frame);
      if (got.retval !== verdict) failures.push(`${name}: verdict ${got.retval}, want ${verdict}`);
      if (Buffer.compare(got.data, want) !== 0) failures.push(`${name}: ${diffHex(got.data, want)}`);
      if (ref) matched++;
      if (Buffer.compare(got.data, pkt.frame) !== 0) changed++;
    }
  });
  assert.deepEqual(failures, [], text);
  return { matched, changed };
}

const DETERMINISTIC: string[] = [
  // arithmetic, with wrap-around cut to the field's width
  'ip => set ip.ttl = ip.ttl - 1',
  'ip => set ip.ttl = ip.ttl - 65',
  'ip => set ip.ttl = ip.ttl * 3',
  'ip => set ip.id = ip.id + 0x10001',
  'tcp => set tcp.seq = tcp.seq + 0x70000001',
  'tcp => set tcp.ack = tcp.ack * 0x10001 + 7',
  'ip => set ip.ttl = ip.ttl ^ 0xff',
  'ip => set ip.ttl = ip.id >> 8',
  'ip => set ip.dsfield = ip.ttl << 1',
  'tcp => set tcp.window_size_value = tcp.window_size_value / 3',
  'tcp => set tcp.window_size_value = tcp.window_size_value % 100',
  'tcp => set tcp.urgent_pointer = tcp.seq / tcp.urgent_pointer',
  'udp => set udp.dstport = udp.srcport | 0x8000',
  'udp => set udp.srcport = udp.length & 0xfff0',
  'ipv6 => set ipv6.hlim = ipv6.hlim - 1',
  'ipv6 => set ipv6.flow = ipv6.flow + ipv6.plen',
  'icmpv6 => set icmpv6.echo.sequence_number = icmpv6.echo.sequence_number + 1',
  'icmp => set icmp.seq = icmp.seq + 1, set icmp.ident = 0',
  'frame => set ip.ttl = frame.len & 0xff',
  'frame => set ip.ttl = frame.len',
  // min, max
  'ip => set ip.ttl = min(ip.ttl, 10)',
  'ip => set ip.ttl = max(ip.ttl, 100)',
  'tcp => set tcp.window_size_value = max(min(tcp.srcport, tcp.dstport), 6000)',
  // several sets read the packet as it was before the rule
  'ip => set ip.ttl = ip.id & 0xff, set ip.id = ip.ttl',
  'tcp => set tcp.srcport = tcp.dstport, set tcp.dstport = tcp.srcport',
  'udp => set udp.srcport = udp.dstport, set udp.dstport = udp.srcport',
  'ip => set ip.src = ip.dst, set ip.dst = ip.src',
  'ipv6 => set ipv6.src = ipv6.dst, set ipv6.dst = ipv6.src',
  'frame => set eth.src = eth.dst, set eth.dst = eth.src',
  'tcp => set tcp.flags.push = 1, set tcp.flags.ack = tcp.flags.push, set tcp.window_size_value = tcp.flags',
  'ip => set ip.ttl = 1, set ip.flags.df = 1, set ip.dsfield.ecn = 3, set ip.checksum = 0x1234',
  'ipv6 => set ipv6.tclass.ecn = 3, set ipv6.flow = 0xfffff, set ipv6.hlim = 1, set ipv6.dst = 2001:db8::9',
  // a value that reads an absent field: the rule's sets all skip
  'ip => set ip.ttl = tcp.srcport & 0xff, set ip.id = 1',
  // sets and a pass verdict
  'ip.ttl == 64 => set ip.ttl = 10, pass',
  'udp => drop',
  'icmp or icmpv6 => pass',
];

for (const hook of ['xdp', 'egress'] as Hook[]) {
  kernelTest(`${hook}: ${DETERMINISTIC.length} rules with arithmetic, min/max, several sets, verdicts match the reference on every shape`, () => {
    for (const text of DETERMINISTIC) {
      const { matched } = checkRuleEverywhere(hook, text);
      assert.ok(matched > 0, `${text} matched no shape`);
    }
  }, { timeout: 300_000 });
}

kernelTest('xdp: set vlan fields on tagged frames, and nothing on untagged ones', () => {
  for (const text of ['vlan => set vlan.id = vlan.id + 1', 'frame => set vlan.priority = 7, set vlan.dei = 0', 'vlan.id == 4000 => set vlan.etype = 0x86dd']) {
    const { matched, changed } = checkRuleEverywhere('xdp', text);
    assert.ok(matched > 0 && changed > 0, text);
  }
});

kernelTest('xdp and tc: random(lo, hi) stays within its bounds and reaches both ends', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    const pkt = shape('ipv4 icmp echo reply'); // TTL 57
    withRules(hook, 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)', (p) => {
      const seen = new Set<number>();
      for (let i = 0; i < 1500; i++) {
        const out = run(p, pkt.frame).data;
        const ttl = readField(out, field('ip.ttl'))!;
        assert.ok(ttl >= 1 && ttl <= 57, `ttl ${ttl}`);
        assert.deepEqual(checksumsValid(out), { ipv4: true, l4: true });
        assert.deepEqual(out, expectedAfterSets(pkt, [{ field: field('ip.ttl'), value: ttl }]));
        seen.add(ttl);
      }
      assert.equal(seen.size, 57, `${hook}: every value of 1..57 drawn in 1500 runs`);
    });
    withRules(hook, 'udp => set udp.dstport = random(65533, 65535), set ip.id = random(ip.ttl, 10)', (p) => {
      const pkt2 = shape('ipv4 udp'); // TTL 64: random(64, 10) is random(10, 64)
      const ports = new Set<number>();
      const ids = new Set<number>();
      for (let i = 0; i < 600; i++) {
        const out = run(p, pkt2.frame).data;
        const port = readField(out, field('udp.dstport'))!;
        const id = readField(out, field('ip.id'))!;
        assert.ok(port >= 65533 && port <= 65535, `port ${port}`);
        assert.ok(id >= 10 && id <= 64, `id ${id}`);
        assert.deepEqual(checksumsValid(out), { ipv4: true, l4: true });
        ports.add(port);
        ids.add(id);
      }
      assert.equal(ports.size, 3);
      assert.equal(ids.size, 55);
    });
  }
});

kernelTest('several rules run in order, each reading what the ones before wrote', () => {
  for (const hook of ['xdp', 'ingress'] as Hook[]) {
    const pkt = shape('ipv4 tcp ack');
    withRules(hook, ['ip => set ip.ttl = 10', 'ip.ttl == 10 => set ip.id = 7', 'ip => set ip.ttl = ip.ttl + 1', 'ip.ttl == 10 => drop'], (p) => {
      const got = run(p, pkt.frame);
      assert.equal(got.retval, verdictsAt(hook).none, 'the last rule sees TTL 11 and does not drop');
      assert.deepEqual(got.data, expectedAfterSets(pkt, [{ field: field('ip.ttl'), value: 11 }, { field: field('ip.id'), value: 7 }]));
      const c = p.counters().rules;
      assert.deepEqual(c.map((x) => x.matched), [1, 1, 1, 0]);
      assert.deepEqual(c.map((x) => x.acted), [1, 1, 1, 0]);
    });
  }
});

kernelTest('drop and pass end the evaluation; later rules neither match nor act', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    const v = verdictsAt(hook);
    withRules(hook, ['tcp => pass', 'udp => drop', 'ip => set ip.ttl = 1', 'frame => drop'], (p) => {
      const tcp = shape('ipv4 tcp ack');
      const udp = shape('ipv4 udp');
      const icmp = shape('ipv4 icmp echo request');
      const r1 = run(p, tcp.frame);
      assert.equal(r1.retval, v.pass);
      assert.deepEqual(r1.data, tcp.frame, 'pass before the set: unchanged');
      const r2 = run(p, udp.frame);
      assert.equal(r2.retval, v.drop);
      assert.deepEqual(r2.data, udp.frame);
      const r3 = run(p, icmp.frame);
      assert.equal(r3.retval, v.drop, 'icmp reaches the last rule');
      assert.deepEqual(r3.data, expectedAfterSets(icmp, [{ field: field('ip.ttl'), value: 1 }]));
      const c = p.counters().rules;
      assert.deepEqual(c, [
        { matched: 1, acted: 1, dropped: 0 },
        { matched: 1, acted: 1, dropped: 1 },
        { matched: 1, acted: 1, dropped: 0 },
        { matched: 1, acted: 1, dropped: 1 },
      ]);
    });
  }
});

kernelTest('checksum: keep writes the field and leaves every checksum stale', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    const r = rule('frame => set ip.ttl = 1, set tcp.flags.push = 1, set udp.dstport = 9, set ipv6.src = 2001:db8::7', hook, { checksum: 'keep' });
    withRules(hook, [r], (p) => {
      for (const name of ['ipv4 tcp ack', 'ipv4 udp', 'ipv6 tcp', 'ipv6 udp'] as const) {
        const pkt = shape(name);
        const ref = referenceRule(r, pkt)!;
        const got = run(p, pkt.frame).data;
        assert.deepEqual(got, expectedAfterSets(pkt, ref.writes, 'keep'), name);
        const report = checksumsValid(got);
        assert.equal(report.l4, false, `${hook} ${name}: L4 checksum stale`);
        if (name.startsWith('ipv4')) assert.equal(report.ipv4, false, `${hook} ${name}: IPv4 checksum stale`);
      }
    });
  }
});

/** The acting decisions the user-space PRNG model predicts for `runs` matching packets on one CPU. */
function predictedDecisions(seed: number, cpu: number, probability: number, runs: number): boolean[] {
  let s = seedState(BigInt(seed) + (BigInt(cpu) << 32n));
  const t = probabilityThreshold(probability);
  const out: boolean[] = [];
  for (let i = 0; i < runs; i++) {
    s = nextState(s);
    out.push(drawValue(s) < t);
  }
  return out;
}

kernelTest('probability 0.1: acts on 7-13% of 2,000 packets, the same seed repeats exactly, as the PRNG model predicts', () => {
  const cpu = 0;
  const pkt = shape('ipv4 tcp ack');
  const decisions = (hook: Hook, seed: number): { acted: boolean[]; counters: { matched: number; acted: number; dropped: number } } =>
    withRules(hook, 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1', (p) => {
      const acted = onCpu(cpu, () => Array.from({ length: 2000 }, () => Buffer.compare(run(p, pkt.frame).data, pkt.frame) !== 0));
      return { acted, counters: p.counters().rules[0]! };
    }, { probability: 0.1, seed });
  for (const hook of ['egress', 'xdp'] as Hook[]) {
    const first = decisions(hook, 42);
    const share = first.acted.filter(Boolean).length / 2000;
    assert.ok(share >= 0.07 && share <= 0.13, `${hook}: acted on ${share * 100}%`);
    assert.deepEqual(first.counters, { matched: 2000, acted: first.acted.filter(Boolean).length, dropped: 0 });
    const again = decisions(hook, 42);
    assert.deepEqual(again.acted, first.acted, `${hook}: a fresh load with the same seed decides the same`);
    assert.deepEqual(first.acted, predictedDecisions(42, cpu, 0.1, 2000), `${hook}: the kernel follows the PRNG model`);
    const other = decisions(hook, 43);
    assert.notDeepEqual(other.acted, first.acted, `${hook}: another seed decides otherwise`);
  }
});

kernelTest('probability just below 1 acts on every packet; a tiny one on almost none', () => {
  const pkt = shape('ipv4 tcp ack');
  withRules('xdp', 'tcp => set ip.ttl = 1', (p) => {
    for (let i = 0; i < 200; i++) run(p, pkt.frame);
    assert.equal(p.counters().rules[0]!.acted, 200);
  }, { probability: 0.9999999999 });
  withRules('xdp', 'tcp => set ip.ttl = 1', (p) => {
    for (let i = 0; i < 200; i++) run(p, pkt.frame);
    assert.equal(p.counters().rules[0]!.acted, 0);
  }, { probability: 1e-12 });
});

kernelTest('every 3 acts on exactly the 3rd, 6th, 9th … matching packet', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    const tcp = shape('ipv4 tcp ack');
    const udp = shape('ipv4 udp');
    withRules(hook, 'tcp => drop', (p) => {
      const drops: number[] = [];
      let matchNo = 0;
      for (let i = 0; i < 40; i++) {
        // Non-matching packets in between do not count.
        if (i % 4 === 1) assert.equal(run(p, udp.frame).retval, verdictsAt(hook).none);
        matchNo++;
        if (run(p, tcp.frame).retval === verdictsAt(hook).drop) drops.push(matchNo);
      }
      assert.deepEqual(drops, Array.from({ length: 13 }, (_, k) => 3 * (k + 1)));
      assert.deepEqual(p.counters().rules[0], { matched: 40, acted: 13, dropped: 13 });
    }, { every: 3 });
  }
});

kernelTest('every and probability together: the every-N count runs first, the draw decides among those', () => {
  const pkt = shape('ipv4 tcp ack');
  withRules('xdp', 'tcp => drop', (p) => {
    const acted = onCpu(0, () => Array.from({ length: 600 }, () => run(p, pkt.frame).retval === 1));
    const c = p.counters().rules[0]!;
    assert.equal(c.matched, 600);
    assert.equal(c.acted, acted.filter(Boolean).length);
    // Only every 2nd packet may act, and about half of those do.
    assert.ok(acted.every((a, i) => !a || i % 2 === 1));
    assert.ok(c.acted > 100 && c.acted < 200, `acted ${c.acted}`);
  }, { every: 2, probability: 0.5 });
});

kernelTest('counters: matched, acted and dropped per rule, over a mix of packets', () => {
  const v = verdictsAt('xdp');
  withRules('xdp', ['ip.ttl > 60 => set ip.ttl = 60', 'ipv6 => drop', 'udp => set udp.dstport = tcp.srcport'], (p) => {
    const want = [{ matched: 0, acted: 0, dropped: 0 }, { matched: 0, acted: 0, dropped: 0 }, { matched: 0, acted: 0, dropped: 0 }];
    for (const [, pkt] of shapesFor('xdp')) {
      const got = run(p, pkt.frame);
      const d = decode(pkt.frame);
      const ttl = readField(pkt.frame, field('ip.ttl'));
      if (ttl !== undefined && ttl > 60) {
        want[0]!.matched++;
        want[0]!.acted++;
      }
      if (d.layers.ipv6 !== undefined) {
        want[1]!.matched++;
        want[1]!.acted++;
        want[1]!.dropped++;
        assert.equal(got.retval, v.drop);
      } else if (d.layers.udp !== undefined) {
        // The value reads tcp.srcport, absent in UDP packets: matched, not acted.
        want[2]!.matched++;
      }
    }
    assert.deepEqual(p.counters().rules, want);
    assert.ok(want[0]!.matched > 5 && want[1]!.matched > 5 && want[2]!.matched > 3);
  });
});

kernelTest('a first fragment keeps a checksum right for the whole datagram after L4 and pseudo-header changes', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    for (const text of ['tcp => set tcp.dstport = 80, set ip.src = 198.18.7.7', 'udp => set udp.srcport = 1, set ipv6.dst = 2001:db8::77']) {
      for (const name of ['ipv4 first fragment tcp', 'ipv6 first fragment udp'] as const) {
        const pkt = shape(name);
        const r = rule(text, hook);
        const ref = referenceRule(r, pkt);
        withRules(hook, [r], (p) => {
          const got = run(p, pkt.frame).data;
          assert.deepEqual(got, ref ? expectedAfterSets(pkt, ref.writes) : pkt.frame);
          const report = checksumsValid(got, { before: pkt.l4Before, after: pkt.l4After });
          assert.equal(report.l4, true, `${hook} ${name} ${text}`);
        });
      }
    }
  }
});

kernelTest('UDP over IPv4 with checksum 0 keeps 0; a computed 0 is sent as 0xffff', () => {
  // Find a source port for which the fixed UDP checksum comes out as 0 from scratch.
  const base = { l3: { kind: 'ipv4' as const }, l4: { kind: 'udp' as const, sport: 1000, payload: Uint8Array.from([1, 2, 3, 4]) } };
  const pkt = buildPacket(base);
  const csum = readField(pkt.frame, field('udp.checksum'))!;
  // Changing the source port by d changes the sum by d; pick d so that the result sums to 0xffff.
  const sum = ~csum & 0xffff;
  const port = (1000 + (0xffff - sum)) % 0xffff;
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    withRules(hook, `udp => set udp.srcport = ${port}`, (p) => {
      const got = run(p, pkt.frame).data;
      assert.equal(readField(got, field('udp.checksum')), 0xffff, `${hook}: zero is sent as 0xffff`);
      assert.equal(checksumsValid(got).l4, true);
      assert.deepEqual(got, expectedAfterSets(pkt, [{ field: field('udp.srcport'), value: port }]));
      const none = shape('ipv4 udp no checksum');
      assert.equal(readField(run(p, none.frame).data, field('udp.checksum')), 0, `${hook}: no checksum stays none`);
    });
  }
});
