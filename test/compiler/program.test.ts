/**
 * Whole programs the kernel must accept: rule sets that leave code unreachable (which the
 * verifier refuses unless the compiler leaves it out), and many rules (verifier work and
 * 16-bit jump offsets grow with them).
 */
import assert from 'node:assert/strict';
import { programInfo } from '../../src/kernel/index.js';
import type { Hook } from '../../src/rules/ast.js';
import { kernelTest } from '../helpers/kernel.js';
import { buildPacket, expectedAfterSets } from '../helpers/packets.js';
import { lookupField } from '../../src/rules/catalog.js';
import { compileRules, rule, run, verdictsAt, withRules } from './harness.js';
import { shapesFor } from './shapes.js';

kernelTest('rules after an unconditional verdict, and matches that cannot hold, load and do nothing', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    const v = verdictsAt(hook);
    withRules(hook, ['frame => drop', 'ip => set ip.ttl = 1'], (p) => {
      for (const [name, pkt] of shapesFor(hook)) {
        const got = run(p, pkt.frame);
        assert.equal(got.retval, v.drop, name);
        assert.deepEqual(got.data, pkt.frame, name);
      }
      assert.equal(p.counters().rules[1]!.matched, 0);
    });
    for (const impossible of ['not frame => drop', 'icmpv6 and udp.srcport == 0 => drop', 'ip and ipv6 => drop']) {
      withRules(hook, [impossible, 'tcp => set ip.ttl = 9'], (p) => {
        for (const [name, pkt] of shapesFor(hook)) {
          const got = run(p, pkt.frame);
          assert.equal(got.retval, v.none, `${impossible} on ${name}`);
        }
        assert.equal(p.counters().rules[0]!.matched, 0);
        assert.ok(p.counters().rules[1]!.acted > 3, 'the next rule still runs');
      });
    }
  }
});

kernelTest('256 port rules load at xdp and tc; each port acts on its own packets only', () => {
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    const ports = Array.from({ length: 256 }, (_, i) => 20000 + 3 * i);
    const rules = ports.map((port, i) => rule(`tcp.dstport == ${port} or udp.dstport == ${port} => set ip.ttl = ${i % 200 + 1}, set tcp.flags.push = 1`, hook, { name: `port-${port}` }));
    const compiled = compileRules(hook, rules);
    withRules(hook, rules, (p) => {
      const verified = programInfo(p.prog).verifiedInsns;
      assert.ok(verified > 0 && verified < 1_000_000, `verifier processed ${verified} instructions`);
      const field = (n: string) => lookupField(n)!;
      for (const k of [0, 1, 128, 255]) {
        for (const l3 of [{ kind: 'ipv4' as const }, { kind: 'ipv6' as const, ext: [{ type: 'hop' as const }] }]) {
          const pkt = buildPacket({ l3, l4: { kind: 'tcp', dport: ports[k] } });
          const got = run(p, pkt.frame);
          const writes = [{ field: field('tcp.flags.push'), value: 1 }];
          if (l3.kind === 'ipv4') writes.push({ field: field('ip.ttl'), value: k % 200 + 1 });
          assert.deepEqual(got.data, expectedAfterSets(pkt, writes), `${hook} port ${ports[k]} over ${l3.kind}`);
        }
      }
      const other = buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', dport: 20001 } });
      assert.deepEqual(run(p, other.frame).data, other.frame, 'a port between the rules: no rule acts');
      const counters = p.counters().rules;
      assert.equal(counters.reduce((n, c) => n + c.matched, 0), 8);
      assert.equal(counters[128]!.acted, 2);
    });
    assert.ok(compiled.insns.length > 20_000, `${compiled.insns.length} instructions: the jumps must reach across them`);
  }
}, { timeout: 300_000 });

kernelTest('the untagged fast path and the general path agree on IPv4 packets of every length', () => {
  // The fast path checks the IPv4 header and the smallest wanted L4 header at once; shorter
  // frames take the general path. Every cut of a TCP, UDP and ICMP packet must be handled alike.
  for (const hook of ['xdp', 'egress'] as Hook[]) {
    withRules(hook, ['tcp => set tcp.window_size_value = 7', 'udp => set udp.srcport = 7', 'icmp => set icmp.seq = 7'], (p) => {
      for (const l4 of [{ kind: 'tcp' as const }, { kind: 'udp' as const }, { kind: 'icmp' as const }]) {
        const whole = buildPacket({ l3: { kind: 'ipv4' }, l4 });
        for (let cut = 34; cut <= whole.frame.length; cut++) {
          const pkt = buildPacket({ l3: { kind: 'ipv4' }, l4, cut });
          const name = l4.kind === 'tcp' ? 'tcp.window_size_value' : l4.kind === 'udp' ? 'udp.srcport' : 'icmp.seq';
          const got = run(p, pkt.frame).data;
          assert.deepEqual(got, expectedAfterSets(pkt, [{ field: lookupField(name)!, value: 7 }]), `${hook} ${l4.kind} cut at ${cut}`);
        }
      }
    });
  }
});
