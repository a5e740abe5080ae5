/**
 * `reject` of TCP in the kernel (test run) and the VM: the same answer everywhere, on every
 * TCP packet shape: a RST from the addresses and ports the segment was sent to, seq/ack as
 * RFC 9293 asks, fresh headers with valid checksums, the frame cut to them, sent back
 * (XDP_TX; TC_ACT_REDIRECT at tc, to egress at ingress and to ingress at egress).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CompileError } from '../../src/compiler/index.js';
import { buildPacket, checksumsValid, decode } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { shapesFor } from '../compiler/shapes.js';
import { compileRules, faultRule, runEverywhere, vmEngine } from './support.js';

const NETMANGLE = fileURLToPath(new URL('../../../bin/netmangle', import.meta.url));

const rd16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;
const rd32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;

test('reject: TCP resets compile; tcp-reset needs a TCP match', () => {
  assert.ok(compileRules('xdp', [faultRule('tcp.dstport == 80 => reject', 'xdp')]).insns.length > 0);
  assert.ok(compileRules('egress', [faultRule('tcp => reject with tcp-reset', 'egress')]).insns.length > 0);
  assert.throws(() => compileRules('ingress', [faultRule('udp => reject with tcp-reset', 'ingress')]), (e: unknown) => e instanceof CompileError && /answers TCP only/.test((e as Error).message));
});

test('reject with tcp-reset on a UDP match is a usage error: one line and a hint, exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-reject-'));
  try {
    const r = spawnSync(NETMANGLE, ['build', '--hook', 'egress', 'udp => reject with tcp-reset', '-o', join(dir, 'x.o')], { encoding: 'utf8' });
    assert.equal(r.status, 2, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 2, r.stderr);
    assert.match(lines[0]!, /^netmangle: rule "rule-1": reject with tcp-reset answers TCP only/);
    assert.match(lines[1]!, /add tcp to the match/);
    assert.equal(existsSync(join(dir, 'x.o')), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

kernelTest('reject: kernel = VM on every TCP shape; the answer is the RST the segment asks for', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const shapes = shapesFor(hook).filter(([, p]) => { const d = decode(p.frame); return d.layers.tcp !== undefined && !d.fragment; });
    assert.ok(shapes.length >= 4, `${hook}: ${shapes.length} TCP shapes`);
    const compiled = compileRules(hook, [faultRule('tcp => reject', hook)]);
    const { outcomes, counters } = runEverywhere(compiled, shapes.map(([, p]) => p.frame));
    shapes.forEach(([name, p], i) => {
      const o = outcomes[i]!;
      const inD = decode(p.frame), outD = decode(o.data);
      const v6 = inD.layers.ipv6 !== undefined;
      const l3 = (v6 ? inD.layers.ipv6 : inD.layers.ip)!;
      const inTcp = inD.layers.tcp!, outTcp = l3 + (v6 ? 40 : 20);
      assert.equal(o.retval, hook === 'xdp' ? 3 : 7, `${hook} ${name}: verdict`);
      assert.equal(o.data.length, outTcp + 20, `${hook} ${name}: length`);
      assert.deepEqual(o.data.subarray(0, 6), p.frame.subarray(6, 12), 'destination MAC = the sender');
      assert.deepEqual(o.data.subarray(6, 12), p.frame.subarray(0, 6));
      const addr = v6 ? [8, 24, 16] : [12, 16, 4];
      assert.deepEqual(o.data.subarray(l3 + addr[0]!, l3 + addr[0]! + addr[2]!), p.frame.subarray(l3 + addr[1]!, l3 + addr[1]! + addr[2]!), 'source = its destination');
      assert.deepEqual(o.data.subarray(l3 + addr[1]!, l3 + addr[1]! + addr[2]!), p.frame.subarray(l3 + addr[0]!, l3 + addr[0]! + addr[2]!));
      assert.equal(rd16(o.data, outTcp), rd16(p.frame, inTcp + 2), 'source port = its destination port');
      assert.equal(rd16(o.data, outTcp + 2), rd16(p.frame, inTcp));
      const flags = p.frame[inTcp + 13]!;
      const outFlags = o.data[outTcp + 13]!;
      if (flags & 0x10) {
        assert.equal(outFlags, 0x04);
        assert.equal(rd32(o.data, outTcp + 4), rd32(p.frame, inTcp + 8), 'seq = its ack');
      } else {
        assert.equal(outFlags, 0x14);
        const segLen = inD.l3End! - inTcp - (p.frame[inTcp + 12]! >> 4) * 4 + (flags & 1) + ((flags >> 1) & 1);
        assert.equal(rd32(o.data, outTcp + 8), (rd32(p.frame, inTcp + 4) + segLen) >>> 0, 'ack = its seq + length');
      }
      assert.equal(outD.layers.tcp, outTcp);
      const sums = checksumsValid(o.data);
      assert.equal(sums.l4, true, `${hook} ${name}: TCP checksum`);
      if (!v6) assert.equal(sums.ipv4, true, `${hook} ${name}: IPv4 checksum`);
    });
    assert.equal(counters[0]!.dropped, shapes.length);
  }
});

test('reject at tc records the redirect in the VM: to egress at ingress, to ingress at egress', () => {
  const syn = buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'tcp', sport: 40000, dport: 80, flags: 0x02, seq: 1000 } }).frame;
  for (const hook of ['ingress', 'egress'] as const) {
    const vm = vmEngine(compileRules(hook, [faultRule('tcp.dstport == 80 => reject', hook)]), 'interpreter');
    const r = vm.vm.run(syn, { ctx: { ifindex: 5 } } as never);
    assert.equal(r.retval | 0, 7);
    assert.equal(vm.vm.machine.redirectIfindex, 5);
    assert.equal(vm.vm.machine.redirectFlags, hook === 'egress' ? 1 : 0);
    const out = r.copyPacket();
    assert.equal(rd32(out, 34 + 8), 1001, 'ack = SYN seq + 1');
  }
});
