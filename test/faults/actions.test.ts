/**
 * The fault actions duplicate and corrupt, in the kernel (test run) and the VM: same verdicts
 * and bytes everywhere, and what each promises (copies sent, bits flipped in the payload only,
 * checksums fixed or left stale as told).
 */
import { execFileSync } from 'node:child_process';
import { inNetns } from '../../src/kernel/netns.js';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseRuleLine } from '../../src/rules/load.js';
import { buildPacket, checksumsValid } from '../helpers/packets.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { shapesFor } from '../compiler/shapes.js';
import { compileRules, faultRule, runEverywhere, vmEngine } from './support.js';

const bitsDiffer = (a: Uint8Array, b: Uint8Array): number[] => {
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) for (let k = 0; k < 8; k++) if (((a[i]! ^ b[i]!) >> k) & 1) out.push(i * 8 + (7 - k));
  return out;
};

test('fault actions: parsed, checked, refused where they cannot run', () => {
  const r = (text: string, hook: 'xdp' | 'ingress' | 'egress' = 'egress') => parseRuleLine(text, { dev: 'd', hook }).groups[0]!.rules[0]!;
  assert.deepEqual(r('udp => duplicate').actions.map((a) => a.kind === 'duplicate' && a.count), [1]);
  assert.deepEqual(r('udp => corrupt 3, duplicate 2, pass').actions.map((a) => a.kind), ['corrupt', 'duplicate', 'pass']);
  assert.throws(() => r('udp => duplicate', 'xdp'), (e: unknown) => /duplicate cannot run at xdp/.test((e as Error).message) && /--hook ingress or --hook egress/.test((e as { hint?: string }).hint ?? ''));
  assert.throws(() => r('udp => duplicate 0'), /the number of copies must be a whole number from 1 to 16/);
  assert.throws(() => r('udp => corrupt, drop'), /drop discards the packet, so corrupt before it would have no effect/);
  assert.throws(() => r('udp => corrupt, corrupt 2'), /corrupt is given twice/);
  assert.throws(() => r('udp => truncate'), /truncate needs the length/);
  assert.throws(() => r('udp => reject with host-unreachabel'), /reject with "host-unreachabel": the answer must be one of/);
  assert.equal(r('tcp => reject with admin-prohibited').actions[0]!.kind, 'reject');
  // Every fault action compiles now (reject and truncate have tests of their own).
  for (const text of ['udp => truncate 60', 'tcp => reject', 'udp => reject with admin-prohibited']) assert.ok(compileRules('egress', [faultRule(text, 'egress')]).insns.length > 0);
});

kernelTest('corrupt: flips exactly BITS bits, all in the L4 payload; checksums fixed by default (kernel = VM, every shape)', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    for (const bits of [1, 5]) {
      const shapes = shapesFor(hook);
      const frames = shapes.map(([, p]) => p.frame);
      const { outcomes, counters } = runEverywhere(compileRules(hook, [faultRule(`ip or ipv6 => corrupt ${bits}`, hook)], 7), frames);
      let flipped = 0;
      shapes.forEach(([name, p], i) => {
        const out = outcomes[i]!.data;
        const diff = bitsDiffer(p.frame, out);
        if (diff.length === 0) return;
        flipped++;
        // Header bytes never change except the L4 checksum word.
        const before = checksumsValid(p.frame, { before: p.l4Before, after: p.l4After });
        const after = checksumsValid(out, { before: p.l4Before, after: p.l4After });
        assert.deepEqual(after, before, `${hook} ${name}: checksums as valid as before`);
        assert.ok(diff.length >= 1 && diff.length <= bits + 16, `${hook} ${name}: ${diff.length} bits changed`);
      });
      assert.ok(flipped >= 10, `${hook}: ${flipped} packets corrupted`);
      assert.equal(counters[0]!.acted, counters[0]!.matched);
    }
  }
});

kernelTest('corrupt with checksum keep: payload damaged, checksum stale; one bit exactly', () => {
  const udp = buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', sport: 9, dport: 9, payload: new Uint8Array(100).fill(0x55) } });
  for (const hook of ['xdp', 'egress'] as const) {
    const { outcomes } = runEverywhere(compileRules(hook, [faultRule('udp => corrupt', hook, { checksum: 'keep' })]), [udp.frame, udp.frame, udp.frame]);
    for (const o of outcomes) {
      const diff = bitsDiffer(udp.frame, o.data);
      assert.equal(diff.length, 1);
      assert.ok(diff[0]! >= (14 + 20 + 8) * 8, `bit ${diff[0]} is in the payload`);
      assert.equal(checksumsValid(o.data).l4, false);
    }
  }
});

kernelTest('duplicate N at tc: N copies sent (VM records them), the original goes on unchanged (kernel = VM)', () => {
  const frame = buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'udp', sport: 9, dport: 9 } }).frame;
  // The kernel's test run sends the copies out of the loopback device of the calling thread's
  // namespace: a namespace of this test's own, never the machine's.
  const ns = uniqueName('dup');
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    for (const hook of ['ingress', 'egress'] as const) duplicateAt(hook, frame, ns);
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
});

function duplicateAt(hook: 'ingress' | 'egress', frame: Uint8Array, ns: string): void {
  {
    const compiled = compileRules(hook, [faultRule('udp => set ip.ttl = 5, duplicate 3', hook)]);
    const { outcomes, counters } = inNetns(ns, () => runEverywhere(compiled, [frame]));
    assert.equal(outcomes[0]!.retval, -1);
    assert.equal(outcomes[0]!.data[22], 5);
    assert.equal(counters[0]!.acted, 1);
    const vm = vmEngine(compiled, 'interpreter');
    vm.run(frame);
    const clones = vm.vm.machine.clones;
    assert.equal(clones.length, 3);
    for (const c of clones) {
      assert.equal(c.ingress, hook === 'ingress');
      assert.deepEqual(c.packet, outcomes[0]!.data, 'copies are the packet as the rule left it');
    }
    // A copy coming back (tc_index marked) passes untouched and is not counted.
    const again = vm.vm.run(frame, { ctx: { tc_index: 0x6e6d } } as never);
    assert.equal(again.retval | 0, -1);
    assert.equal(again.ctxField('tc_index'), 0);
    assert.equal(vm.counters()[0]!.matched, 1);
  }
}
