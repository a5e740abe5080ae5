/**
 * duplicate and corrupt live, through `netmangle run` on h1's egress, judged by h2's kernel:
 * a UDP stream of 200 datagrams to a closed port arrives exactly twice (UdpNoPorts), and
 * corrupt with `--checksum keep` raises UdpInCsumErrors by exactly the number corrupted, and
 * without it by 0. Checksum offloads are off on the path (KERNEL-NOTES), so h1's datagrams
 * leave with final checksums and h2 really checks them.
 */
import assert from 'node:assert/strict';
import { Lab } from '../../src/lab/index.js';
import { nstatSnapshot } from '../../src/lab/measure.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { CHECKSUM_LAB, startRun } from './lab-support.js';

const COUNT = 200;
const TOPOLOGY = CHECKSUM_LAB;

async function sendUdp(lab: Lab, to: string): Promise<void> {
  const script = `import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(${COUNT}):\n  s.sendto(bytes(range(100)),('${to}',9999))\n  time.sleep(0.001)\n`;
  const r = await lab.exec('h1', ['python3', '-c', script], { timeoutMs: 20_000 });
  assert.equal(r.code, 0, r.stderr);
}

async function withRule(lab: Lab, rule: string, extra: string[], fn: () => Promise<void>): Promise<Record<string, number>> {
  const run = await startRun(['--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', '--seed', '3', rule, ...extra]);
  try {
    await fn();
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    const stopped = await run.stop();
    assert.equal(stopped.code, 0, stopped.output);
    return stopped.counters['rule-1']!;
  }
}

kernelTest('lab: duplicate doubles a UDP stream exactly; corrupt + checksum keep raises UdpInCsumErrors by the count, fix by 0', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('fa') });
  try {
    const h2 = lab.address('h2');
    const delta = async (fn: () => Promise<Record<string, number>>) => {
      const before = await nstatSnapshot(lab, 'h2');
      const counters = await fn();
      const after = await nstatSnapshot(lab, 'h2');
      return { counters, noPorts: after.UdpNoPorts! - before.UdpNoPorts!, csumErrors: after.UdpInCsumErrors! - before.UdpInCsumErrors! };
    };

    const dup = await delta(() => withRule(lab, 'udp.dstport == 9999 => duplicate', [], () => sendUdp(lab, h2)));
    assert.equal(dup.counters.acted, COUNT);
    assert.equal(dup.noPorts, 2 * COUNT, 'every datagram arrived twice');
    assert.equal(dup.csumErrors, 0);

    const keep = await delta(() => withRule(lab, 'udp.dstport == 9999 => corrupt', ['--checksum', 'keep'], () => sendUdp(lab, h2)));
    assert.equal(keep.counters.acted, COUNT);
    assert.equal(keep.csumErrors, COUNT, 'each corrupted datagram failed its checksum');
    assert.equal(keep.noPorts, 0);

    const fix = await delta(() => withRule(lab, 'udp.dstport == 9999 => corrupt 3', [], () => sendUdp(lab, h2)));
    assert.equal(fix.counters.acted, COUNT);
    assert.equal(fix.csumErrors, 0, 'checksums followed the flips');
    assert.equal(fix.noPorts, COUNT);
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });
