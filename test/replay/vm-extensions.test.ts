/** What replay added to the VM: bpf_xdp_get_buff_len and runs on a range of a buffer. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Assembler } from '../../src/bpf/asm.js';
import { createMap, Vm } from '../../src/vm/index.js';
import { shapes } from '../compiler/shapes.js';
import { compileGroup } from '../../src/compiler/index.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { lookupField } from '../../src/rules/catalog.js';

test('bpf_xdp_get_buff_len returns the frame length, on both engines', () => {
  const a = new Assembler();
  a.call(188).exit();
  for (const engine of ['jit', 'interpreter'] as const) {
    const vm = new Vm(a.assemble().insns, { programType: 'xdp', engine });
    for (const n of [14, 60, 1514, 9000]) assert.equal(vm.run(new Uint8Array(n)).retval, n);
  }
});

test('runAt on a range of a buffer gives what run gives on a copy of that range', () => {
  const g = parseRuleLine('ip or ipv6 => set ip.ttl = 3, set ipv6.hlim = 3', { dev: 'x', hook: 'ingress' }).groups[0]!;
  const c = compileGroup(g, { seed: 1, lookupField });
  for (const engine of ['jit', 'interpreter'] as const) {
    const a = new Vm(c.insns, { programType: 'sched_cls', engine, mapRefs: c.mapRefs, maps: mapsFor(c) });
    const b = new Vm(c.insns, { programType: 'sched_cls', engine, mapRefs: c.mapRefs, maps: mapsFor(c) });
    for (const [name, p] of shapes()) {
      const big = new Uint8Array(p.frame.length + 300).fill(0xee);
      big.set(p.frame, 150);
      const x = a.run(p.frame);
      const xr = [x.retval, Buffer.from(x.packet)];
      const y = b.runAt(big, 150, p.frame.length);
      assert.deepEqual([y.retval, Buffer.from(y.packet)], xr, `${engine} ${name}`);
    }
  }
});

function mapsFor(c: ReturnType<typeof compileGroup>) {
  return Object.fromEntries(c.maps.map((m) => [m.name, createVmMapFor(m)]));
}
function createVmMapFor(m: { name: string; type: 'array' | 'percpu_array' | 'lru_hash' | 'hash'; keySize: number; valueSize: number; maxEntries: number }) {
  return createMap({ type: m.type, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries, name: m.name });
}
