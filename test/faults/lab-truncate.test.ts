/**
 * truncate live, through `netmangle run` on h1's egress, judged by h2: 100-byte UDP datagrams
 * cut to 70-byte frames arrive as 28-byte datagrams (lengths and checksums fixed, h2 checks
 * checksums), and with `--lengths keep` every one is dropped as truncated (IpExtInTruncatedPkts:
 * by the bridge's namespace when br_netfilter checks bridged IPv4, else by h2), none reaching
 * the socket.
 */
import assert from 'node:assert/strict';
import { Lab } from '../../src/lab/index.js';
import { nstatSnapshot } from '../../src/lab/measure.js';
import { kernelTest, scaled, uniqueName } from '../helpers/kernel.js';
import { CHECKSUM_LAB, startRun } from './lab-support.js';

const COUNT = 100;
const TOPOLOGY = CHECKSUM_LAB;

/** Sends COUNT 100-byte datagrams h1 → h2:9999 under the rule; returns the sizes h2's socket received and the counters. */
async function underRule(lab: Lab, extra: string[]): Promise<{ sizes: number[]; counters: Record<string, number> }> {
  const h2 = lab.address('h2');
  const receiver = `import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('${h2}',9999))\ns.settimeout(${scaled(1500) / 1000})\nout=[]\ntry:\n  while True: out.append(len(s.recv(2000)))\nexcept socket.timeout: pass\nprint(' '.join(map(str,out)))\n`;
  const sender = `import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(${COUNT}):\n  s.sendto(bytes(range(100)),('${h2}',9999))\n  time.sleep(0.001)\n`;
  const run = await startRun(['--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', 'udp.dstport == 9999 => truncate 70', ...extra]);
  let sizes: number[] = [];
  try {
    const received = lab.exec('h2', ['python3', '-c', receiver], { timeoutMs: scaled(30_000) });
    // Until the receiver has bound its socket (python starts slowly on an emulated machine).
    await new Promise((r) => setTimeout(r, scaled(300)));
    const sent = await lab.exec('h1', ['python3', '-c', sender], { timeoutMs: scaled(20_000) });
    assert.equal(sent.code, 0, sent.stderr);
    const r = await received;
    assert.equal(r.code, 0, r.stderr);
    sizes = r.stdout.trim() === '' ? [] : r.stdout.trim().split(' ').map(Number);
  } finally {
    const stopped = await run.stop();
    assert.equal(stopped.code, 0, stopped.output);
    return { sizes, counters: stopped.counters['rule-1']! };
  }
}

kernelTest('lab: truncate 70 delivers UDP datagrams cut to 28 bytes; with --lengths keep the receiver drops them as truncated', async () => {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName('tr') });
  try {
    const before = await nstatSnapshot(lab, 'h2');
    const swBefore = await nstatSnapshot(lab, 'sw');
    const fixed = await underRule(lab, []);
    const middle = await nstatSnapshot(lab, 'h2');
    assert.equal(fixed.counters.acted, COUNT);
    assert.deepEqual(fixed.sizes, new Array(COUNT).fill(70 - 14 - 20 - 8), 'every datagram arrived, 28 bytes long');
    assert.equal(middle.UdpInCsumErrors! - before.UdpInCsumErrors!, 0, 'checksums followed the cut');

    const kept = await underRule(lab, ['--lengths', 'keep']);
    const after = await nstatSnapshot(lab, 'h2');
    const swAfter = await nstatSnapshot(lab, 'sw');
    assert.equal(kept.counters.acted, COUNT);
    assert.deepEqual(kept.sizes, [], 'no datagram reached the socket');
    // The first IPv4 header check on the way counts it: the bridge's when br_netfilter is on
    // (bridge-nf-call-iptables: it validates bridged IPv4 headers), h2's otherwise.
    const truncated = (after.IpExtInTruncatedPkts! - middle.IpExtInTruncatedPkts!) + (swAfter.IpExtInTruncatedPkts! - swBefore.IpExtInTruncatedPkts!);
    assert.equal(truncated, COUNT, 'each dropped by an IP layer as truncated');
  } finally {
    await lab.down();
  }
}, { timeout: 120_000 });
