/**
 * At tc, a packet netmangle leaves alone goes on to the next program on the hook: `pass` ends
 * netmangle's rules, not the hook (TC_ACT_UNSPEC, which tcx reads as TCX_NEXT), and so does a
 * packet no rule matched or one a rule changed. Checked in the kernel: a netmangle program and,
 * after it on the same tcx hook, a program counting what reaches it, with real pings through a
 * veth pair. The verdicts themselves are checked with BPF_PROG_TEST_RUN at every hook.
 */
import assert from 'node:assert/strict';
import { attachProgram } from '../../src/kernel/attach.js';
import { createMap, createTcxLink, loadProgram, queryProgs } from '../../src/kernel/index.js';
import { probeFeaturesCached } from '../../src/kernel/probe.js';
import { inNetns } from '../../src/kernel/netns.js';
import { loadCompiled } from '../../src/live/index.js';
import type { Hook } from '../../src/rules/ast.js';
import { kernelTest } from '../helpers/kernel.js';
import { buildPacket } from '../helpers/packets.js';
import { TC_ACT_OK, countingProgram, createVethLab, u32Key } from '../kernel/bpf-fixtures.js';
import { compileRules, rule, run, withRules, TC_ACT_UNSPEC, XDP_PASS } from './harness.js';

const RULES = {
  pass: 'icmp => pass',
  changed: 'icmp => set ip.ttl = 33',
  untouched: 'tcp.dstport == 9 => drop',
  'pass after a change': ['icmp => set ip.dsfield.dscp = 10', 'icmp => pass'],
} as const;

kernelTest('pass, no match and a changed packet return TC_ACT_UNSPEC at tc (the next program decides) and XDP_PASS at xdp', () => {
  const echo = buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'icmp', type: 8, ident: 1, seq: 1 } }).frame;
  for (const hook of ['xdp', 'ingress', 'egress'] as Hook[]) {
    const want = hook === 'xdp' ? XDP_PASS : TC_ACT_UNSPEC;
    for (const [what, rules] of Object.entries(RULES)) {
      withRules(hook, [...(typeof rules === 'string' ? [rules] : rules)], (p) => {
        assert.equal(run(p, echo).retval, want, `${hook}, ${what}`);
      });
    }
  }
});

kernelTest('a second program on the same tcx hook sees the packets a netmangle pass rule, a change or no match let through', (t) => {
  if (!probeFeaturesCached().features.tcx) {
    t.skip('this kernel has no tcx links (6.6+)');
    return;
  }
  const lab = createVethLab();
  try {
    for (const [what, rules] of Object.entries(RULES)) {
      for (const [hook, ns, ifindex] of [['egress', lab.nsA, lab.ifindexA], ['ingress', lab.nsB, lab.ifindexB]] as const) {
        const list = typeof rules === 'string' ? [rules] : [...rules];
        const compiled = compileRules(hook, list.map((r, i) => rule(r, hook, { name: `rule-${i + 1}` })));
        using counts = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 1, name: 'nm_next_cnt' });
        const code = countingProgram(TC_ACT_OK);
        using counter = loadProgram({ type: 'sched_cls', insns: code.insns, mapRefs: code.mapRefs, maps: { counts }, name: 'nm_next_count' });
        const netmangle = loadCompiled(compiled);
        try {
          using first = inNetns(ns, () => createTcxLink(netmangle.prog, ifindex, hook));
          using second = inNetns(ns, () => createTcxLink(counter, ifindex, hook, { after: netmangle.prog.id }));
          assert.deepEqual(inNetns(ns, () => queryProgs(ifindex, `tcx_${hook}`)).progIds, [netmangle.prog.id, counter.id]);
          const before = counts.lookup(u32Key(0))!.readBigUInt64LE(0);
          assert.ok(lab.ping(3), `${what} at ${hook}: ping answered`);
          const seen = counts.lookup(u32Key(0))!.readBigUInt64LE(0) - before;
          const matched = netmangle.counters().rules.reduce((n, r) => n + r.matched, 0);
          if (what !== 'untouched') assert.ok(matched >= 3, `${what} at ${hook}: netmangle matched ${matched} packets`);
          assert.ok(seen >= 3n, `${what} at ${hook}: the program after netmangle saw ${seen} packets`);
          void first;
          void second;
        } finally {
          netmangle.close();
        }
      }
    }
  } finally {
    lab.destroy();
  }
});

kernelTest('cls_bpf direct-action: the filter after netmangle\'s sees what a pass rule lets through', () => {
  const lab = createVethLab();
  try {
    for (const [hook, ns, dev] of [['egress', lab.nsA, lab.devA], ['ingress', lab.nsB, lab.devB]] as const) {
      const compiled = compileRules(hook, [rule(RULES.pass, hook)]);
      using counts = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 1, name: 'nm_next_cnt' });
      const code = countingProgram(TC_ACT_OK);
      using counter = loadProgram({ type: 'sched_cls', insns: code.insns, mapRefs: code.mapRefs, maps: { counts }, name: 'nm_next_count' });
      const netmangle = loadCompiled(compiled);
      try {
        // Lower priorities run first: netmangle's filter, then the counter.
        using first = attachProgram(netmangle.prog, { dev, hook, netns: ns, path: 'netlink', tcPriority: 10, tcHandle: 1 });
        using second = attachProgram(counter, { dev, hook, netns: ns, path: 'netlink', tcPriority: 20, tcHandle: 2 });
        assert.ok(lab.ping(3), `${hook}: ping answered`);
        const seen = counts.lookup(u32Key(0))!.readBigUInt64LE(0);
        const matched = netmangle.counters().rules[0]!.matched;
        assert.ok(matched >= 3, `${hook}: netmangle matched ${matched} packets`);
        assert.ok(seen >= 3n, `${hook}: the filter after netmangle's saw ${seen} packets`);
        void first;
        void second;
      } finally {
        netmangle.close();
      }
    }
  } finally {
    lab.destroy();
  }
});
