/**
 * `reject` with an ICMP destination unreachable (IPv4), kernel (test run) = VM on every IPv4
 * shape: the answer goes back to the sender with the chosen code, quoting the original IP
 * header and 8 bytes after it, checksums valid; no answer (a drop) to ICMP errors, non-first
 * fragments and multicast.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CompileError } from '../../src/compiler/index.js';
import { buildPacket, checksumsValid, decode } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { shapesFor } from '../compiler/shapes.js';
import { compileRules, faultRule, runEverywhere, vmEngine } from './support.js';

const CODES = { 'host-unreachable': 1, 'port-unreachable': 3, 'admin-prohibited': 13 } as const;

test('reject: ICMP answers compile for any match; tcp-reset only for TCP ones', () => {
  assert.ok(compileRules('xdp', [faultRule('udp and ip => reject', 'xdp')]).insns.length > 0);
  assert.ok(compileRules('xdp', [faultRule('udp => reject', 'xdp')]).insns.length > 0);
  assert.throws(() => compileRules('xdp', [faultRule('udp and ip => reject with tcp-reset', 'xdp')]), (e: unknown) => e instanceof CompileError && /answers TCP only/.test((e as Error).message));
});

kernelTest('reject with ICMP unreachable: kernel = VM on every IPv4 shape; the answer quotes the packet', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    for (const [word, code] of Object.entries(CODES)) {
      const shapes = shapesFor(hook).filter(([, p]) => decode(p.frame).layers.ip !== undefined);
      const { outcomes } = runEverywhere(compileRules(hook, [faultRule(`ip => reject with ${word}`, hook)]), shapes.map(([, p]) => p.frame));
      let answered = 0;
      shapes.forEach(([name, p], i) => {
        const o = outcomes[i]!;
        const d = decode(p.frame);
        const l3 = d.layers.ip!;
        const icmpError = d.layers.icmp !== undefined && ![0, 8].includes(p.frame[d.layers.icmp]!);
        if (d.fragment?.offset || icmpError) {
          assert.equal(o.retval, hook === 'xdp' ? 1 : 2, `${hook} ${name}: dropped without an answer`);
          return;
        }
        answered++;
        assert.equal(o.retval, hook === 'xdp' ? 3 : 7, `${hook} ${name}: sent back`);
        const out = o.data;
        const ihl = (p.frame[l3]! & 0xf) * 4;
        const quote = Math.min(ihl + 8, p.frame.length - l3) & ~1;
        assert.equal(out.length, l3 + 28 + quote, `${hook} ${name}: length`);
        assert.deepEqual(out.subarray(0, 6), p.frame.subarray(6, 12));
        assert.deepEqual(out.subarray(12, l3), p.frame.subarray(12, l3), 'EtherType and tags kept');
        assert.deepEqual(out.subarray(l3 + 12, l3 + 16), p.frame.subarray(l3 + 16, l3 + 20), 'from the address it was sent to');
        assert.deepEqual(out.subarray(l3 + 16, l3 + 20), p.frame.subarray(l3 + 12, l3 + 16));
        assert.equal(out[l3 + 9], 1);
        assert.deepEqual([out[l3 + 20], out[l3 + 21]], [3, code]);
        assert.deepEqual(out.subarray(l3 + 28), p.frame.subarray(l3, l3 + quote), 'the quote');
        assert.deepEqual(checksumsValid(out.subarray(0, l3 + 20)).ipv4, true);
        const sums = checksumsValid(out);
        assert.equal(sums.ipv4, true);
        assert.equal(sums.l4, true, `${hook} ${name}: ICMP checksum`);
      });
      assert.ok(answered >= 5, `${hook}: ${answered} answered`);
    }
  }
});

test('reject in the VM: UDP to a multicast address gets no answer', () => {
  const mc = buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '239.1.2.3' }, l4: { kind: 'udp', sport: 9, dport: 9 } }).frame;
  const vm = vmEngine(compileRules('xdp', [faultRule('ip => reject', 'xdp')]), 'interpreter');
  assert.equal(vm.run(mc).retval, 1);
});

const CODES6 = { 'host-unreachable': [1, 3], 'port-unreachable': [1, 4], 'admin-prohibited': [1, 1], 'proto-unreachable': [4, 1] } as const;

kernelTest('reject with ICMPv6: kernel = VM on every IPv6 shape; the answer quotes the packet', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    for (const [word, [type, code]] of Object.entries(CODES6)) {
      const shapes = shapesFor(hook).filter(([, p]) => decode(p.frame).layers.ipv6 !== undefined);
      const { outcomes } = runEverywhere(compileRules(hook, [faultRule(`ipv6 => reject with ${word}`, hook)]), shapes.map(([, p]) => p.frame));
      let answered = 0;
      shapes.forEach(([name, p], i) => {
        const o = outcomes[i]!;
        const d = decode(p.frame);
        const l3 = d.layers.ipv6!;
        const icmpError = d.layers.icmpv6 !== undefined && p.frame[d.layers.icmpv6]! < 128;
        if (icmpError || p.frame[l3 + 24] === 0xff) {
          assert.equal(o.retval, hook === 'xdp' ? 1 : 2, `${hook} ${name}: dropped without an answer`);
          return;
        }
        answered++;
        assert.equal(o.retval, hook === 'xdp' ? 3 : 7, `${hook} ${name}: sent back`);
        const out = o.data;
        const quote = Math.min(48, p.frame.length - l3) & ~1;
        assert.equal(out.length, l3 + 48 + quote, `${hook} ${name}: length`);
        assert.deepEqual(out.subarray(0, 6), p.frame.subarray(6, 12));
        assert.deepEqual(out.subarray(l3 + 8, l3 + 24), p.frame.subarray(l3 + 24, l3 + 40), 'from the address it was sent to');
        assert.deepEqual(out.subarray(l3 + 24, l3 + 40), p.frame.subarray(l3 + 8, l3 + 24));
        assert.deepEqual([out[l3 + 6], out[l3 + 7]], [58, 64]);
        assert.deepEqual([out[l3 + 40], out[l3 + 41]], [type, code]);
        assert.deepEqual(out.subarray(l3 + 48), p.frame.subarray(l3, l3 + quote), 'the quote');
        assert.equal(checksumsValid(out).l4, true, `${hook} ${name}: ICMPv6 checksum`);
      });
      assert.ok(answered >= 3, `${hook}: ${answered} answered`);
    }
  }
});
