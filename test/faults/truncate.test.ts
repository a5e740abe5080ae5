/**
 * `truncate LEN` in the kernel (test run) and the VM: same verdicts and bytes everywhere on
 * every packet shape, frames cut to LEN, length fields shrunk with their checksums right (or
 * left as they were with `lengths: keep`).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildPacket, checksumsValid } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { shapesFor } from '../compiler/shapes.js';
import { compileRules, faultRule, runEverywhere, vmEngine } from './support.js';

const rd16 = (b: Uint8Array, off: number): number => (b[off]! << 8) | b[off + 1]!;

test('truncate compiles at every hook (no longer refused)', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const c = compileRules(hook, [faultRule('udp => truncate 60', hook)]);
    assert.ok(c.insns.length > 0);
  }
});

test('truncate in the VM: a 200-byte UDP datagram cut to 60 bytes has IP and UDP lengths and checksums right', () => {
  const udp = buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'udp', sport: 9, dport: 9, payload: Uint8Array.from({ length: 158 }, (_, i) => i) } });
  for (const hook of ['xdp', 'egress'] as const) {
    for (const len of [60, 61, 43]) {
      const vm = vmEngine(compileRules(hook, [faultRule(`udp => truncate ${len}`, hook)]), 'interpreter');
      const out = vm.run(udp.frame).data;
      assert.equal(out.length, len, `${hook} ${len}`);
      assert.equal(rd16(out, 14 + 2), len - 14, 'IP total length');
      assert.equal(rd16(out, 34 + 4), len - 34, 'UDP length');
      assert.deepEqual(checksumsValid(out), { ipv4: true, l4: true }, `${hook} ${len}`);
    }
  }
});

kernelTest('truncate: kernel = VM on every shape; frames cut to LEN; checksums as valid as before (lengths fixed)', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    for (const len of [14, 37, 60, 75, 76]) {
      const shapes = shapesFor(hook);
      const frames = shapes.map(([, p]) => p.frame);
      const { outcomes, counters } = runEverywhere(compileRules(hook, [faultRule(`frame => truncate ${len}`, hook)], 3), frames);
      let cut = 0;
      shapes.forEach(([name, p], i) => {
        const out = outcomes[i]!.data;
        assert.equal(out.length, Math.min(len, p.frame.length), `${hook} ${name} ${len}: length`);
        assert.deepEqual(out, p.frame.subarray(0, out.length).length === out.length && out.length === p.frame.length ? p.frame : out);
        if (out.length < p.frame.length) cut++;
        // Whatever the cut leaves of a whole datagram keeps checksums as valid as they were.
        const before = checksumsValid(p.frame, { before: p.l4Before, after: p.l4After });
        const after = checksumsValid(out, { before: p.l4Before, after: p.l4After });
        if (after.ipv4 !== undefined) assert.equal(after.ipv4, before.ipv4, `${hook} ${name} ${len}: IPv4 header checksum`);
        if (after.l4 !== undefined && before.l4 !== undefined && !p.l4Before && !p.l4After) {
          assert.equal(after.l4, before.l4, `${hook} ${name} ${len}: L4 checksum`);
        }
      });
      assert.ok(cut >= 5, `${hook} ${len}: ${cut} frames cut`);
      assert.equal(counters[0]!.acted, counters[0]!.matched);
    }
  }
});

kernelTest('truncate with lengths keep: the frame is cut, the headers say what they said (kernel = VM)', () => {
  const udp = buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', sport: 9, dport: 9, payload: new Uint8Array(100).fill(0x55) } });
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const { outcomes } = runEverywhere(compileRules(hook, [faultRule('udp => truncate 50', hook, { lengths: 'keep' })]), [udp.frame]);
    assert.deepEqual(outcomes[0]!.data, udp.frame.subarray(0, 50));
  }
});

kernelTest('truncate of long datagrams (TCP, UDP; IPv4, IPv6): the cut payload leaves the checksum exactly (kernel = VM)', () => {
  const payload = Uint8Array.from({ length: 1400 }, (_, i) => (i * 131 + 7) & 0xff);
  const packets = [
    buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', sport: 9, dport: 9, payload } }),
    buildPacket({ l3: { kind: 'ipv6' }, l4: { kind: 'udp', sport: 9, dport: 9, payload } }),
    buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x18, payload } }),
    buildPacket({ l3: { kind: 'ipv6' }, l4: { kind: 'tcp', flags: 0x18, payload: payload.subarray(0, 1001) } }),
  ];
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    for (const len of [95, 300, 1023]) {
      const { outcomes } = runEverywhere(compileRules(hook, [faultRule(`ip or ipv6 => truncate ${len}`, hook)]), packets.map((p) => p.frame));
      outcomes.forEach((o, i) => {
        assert.equal(o.data.length, len);
        assert.deepEqual(o.data.subarray(0, 12), packets[i]!.frame.subarray(0, 12));
        const report = checksumsValid(o.data);
        assert.equal(report.l4, true, `${hook} packet ${i} cut to ${len}: L4 checksum`);
        if (report.ipv4 !== undefined) assert.equal(report.ipv4, true);
      });
    }
  }
});
