/**
 * tcp.len at tc egress, live: locally sent TCP reaches the hook as GSO super-packets whose IP
 * length field covers the whole super-packet, and tcp.len reports that (more than any one
 * segment on the wire can carry). With one segment per packet at the hook (gso_max_segs 1)
 * no packet has more than an MSS of payload, and the field still sees the data segments.
 */
import assert from 'node:assert/strict';
import { Lab } from '../../src/lab/lab.js';
import { applyRule } from '../../src/lab/experiments.js';
import { tcpTransfer } from '../../src/lab/measure.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';

/** The most payload one segment carries on a 1500-byte link (IPv4 without TCP options). */
const MSS_MAX = 1460;

async function matchedDuring(lab: Lab, rule: string, family: 4 | 6, perSegment: boolean): Promise<number> {
  const applied = await applyRule(lab, 'h1', 'eth0', 'egress', rule, { perSegment });
  try {
    await tcpTransfer(lab, 'h1', 'h2', { family, bytes: 4_000_000 });
  } finally {
    await applied.detach();
  }
  const m = /matched=(\d+)/.exec(applied.output().trim().split('\n').filter((l) => /matched=/.test(l)).pop() ?? '');
  assert.ok(m, `no counters in the output of netmangle run: ${applied.output()}`);
  return Number(m[1]);
}

kernelTest('egress: tcp.len of a GSO super-packet is its whole payload; one segment per packet, at most an MSS', async () => {
  await using lab = await Lab.up({ switch: 'sw', hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'sw' }, { a: 'h2', b: 'sw' }] }, { name: uniqueName('tlen') });
  for (const family of [4, 6] as const) {
    const big = `tcp.len > ${MSS_MAX} => pass`;
    assert.ok(await matchedDuring(lab, big, family, false) > 0, `IPv${family}: no super-packet with tcp.len > ${MSS_MAX} at egress`);
    assert.equal(await matchedDuring(lab, big, family, true), 0, `IPv${family}: a packet with tcp.len > ${MSS_MAX} with gso_max_segs 1`);
    assert.ok(await matchedDuring(lab, 'tcp.len > 1000 => pass', family, true) > 1000, `IPv${family}: too few full data segments seen`);
  }
}, { timeout: 180_000 });
