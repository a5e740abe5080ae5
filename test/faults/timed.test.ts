/**
 * The timed triggers: `limit` (a rate limit kept by the program, GCRA on bpf_ktime_get_ns)
 * and `for` / `start-after` (a time window from the rule's first matching packet). Kernel and
 * VM agree where the kernel's clock cannot matter (a test run lasts microseconds); the VM,
 * whose clock is the run's ktimeNs (replay: packet timestamps), shows the rates and windows.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildPacket } from '../helpers/packets.js';
import { kernelTest } from '../helpers/kernel.js';
import { compileRules, faultRule, runEverywhere, vmEngine } from './support.js';

const udp = buildPacket({ l3: { kind: 'ipv4', src: '198.18.0.1', dst: '198.18.0.2' }, l4: { kind: 'udp', sport: 9, dport: 9 } }).frame;
const MS = 1_000_000;

kernelTest('limit, for, start-after: kernel = VM within one test run (bursts of two; open and closed windows)', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const frames = new Array(10).fill(udp);
    const limited = runEverywhere(compileRules(hook, [faultRule('udp => set ip.ttl = 9', hook, { limit: '1/s' })]), frames);
    assert.deepEqual(limited.outcomes.map((o) => o.data[22]), frames.map((_, i) => (i < 2 ? 9 : udp[22]!)));
    assert.equal(limited.counters[0]!.acted, 2);
    assert.equal(limited.counters[0]!.matched, 10);
    const open = runEverywhere(compileRules(hook, [faultRule('udp => drop', hook, { for: '1h' })]), frames);
    assert.equal(open.counters[0]!.dropped, 10);
    const notYet = runEverywhere(compileRules(hook, [faultRule('udp => drop', hook, { startAfter: '1h' })]), frames);
    assert.equal(notYet.counters[0]!.dropped, 0);
    assert.equal(notYet.counters[0]!.matched, 10);
  }
});

test('limit 100/s over 3 s of 1000 packets/s (VM clock = packet times): 300 acted, within one of the rate', () => {
  for (const hook of ['xdp', 'egress'] as const) {
    const vm = vmEngine(compileRules(hook, [faultRule('udp => drop', hook, { limit: '100/s' })]), 'jit');
    let dropped = 0;
    const t0 = 86_400_000 * MS; // a day after boot
    for (let i = 0; i < 3000; i++) if (vm.run(udp, t0 + i * MS).retval === (hook === 'xdp' ? 1 : 2)) dropped++;
    assert.ok(dropped >= 300 && dropped <= 302, `${hook}: ${dropped} dropped`);
    assert.equal(vm.counters()[0]!.dropped, dropped);
  }
});

test('start-after 1s with for 2s: acts on the packets 1 s to 3 s after the first match (VM clock)', () => {
  const vm = vmEngine(compileRules('ingress', [faultRule('udp => drop', 'ingress', { startAfter: '1s', for: '2s' })]), 'interpreter');
  const acted: number[] = [];
  for (let i = 0; i < 400; i++) if (vm.run(udp, 5_000 * MS + i * 10 * MS).retval === 2) acted.push(i);
  assert.equal(acted.length, 200);
  assert.equal(acted[0], 100);
  assert.equal(acted[acted.length - 1], 299);
});
