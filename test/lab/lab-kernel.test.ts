// The lab library against the kernel: build, ping, take down, leave nothing.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { Lab, LabExistsError, withLab } from '../../src/lab/index.js';
import { ping, tcpTransfer, nstatSnapshot, nstatDelta } from '../../src/lab/measure.js';
import { assertLabGone, macsIn } from './lab-helpers.js';

kernelTest('default lab: h1 pings h2 over IPv4 and IPv6, then down leaves no namespace or interface', async () => {
  const name = uniqueName('lt');
  let macs = new Set<string>();
  const lab = await Lab.up(undefined, { name });
  try {
    assert.deepEqual(lab.hosts, ['h1', 'h2']);
    assert.equal(lab.netns('h1'), `nm-${name}-h1`);
    macs = await macsIn(lab.nodes().map((n) => lab.netns(n)));
    // Two veth pairs (the bridge takes the MAC address of one of its ports).
    assert.ok(macs.size >= 4, `interfaces found: ${macs.size}`);
    const v4 = await ping(lab, 'h1', lab.address('h2', 4), { count: 2 });
    assert.equal(v4.received, 2, v4.output);
    assert.deepEqual(v4.ttls, [64, 64]);
    const v6 = await ping(lab, 'h1', lab.address('h2', 6), { count: 2 });
    assert.equal(v6.received, 2, v6.output);
    // The host side is called eth0, so `--dev eth0` works in a lab.
    const link = await lab.exec('h1', ['ip', '-j', 'link', 'show', 'eth0'], { check: true });
    assert.equal((JSON.parse(link.stdout) as Array<{ ifname: string }>)[0]!.ifname, 'eth0');
    // The switch namespace holds the bridge with both ports.
    const ports = await lab.exec('sw', ['ip', '-j', 'link', 'show', 'master', 'sw'], { check: true });
    assert.deepEqual((JSON.parse(ports.stdout) as Array<{ ifname: string }>).map((p) => p.ifname).sort(), ['h1', 'h2']);
  } finally {
    await lab.down();
  }
  await assertLabGone(name, macs);
});

kernelTest('custom topology: two links through a router, MTU, offloads, gso_max_segs, routes', async () => {
  const name = uniqueName('lt');
  const topology = {
    hosts: { h1: {}, r: {}, h3: { gso_max_segs: 1 } },
    links: [
      { a: 'h1', b: 'r', mtu: 1400 },
      { a: 'r', b: { host: 'h3', tx_checksum: 'off' as const, rx_checksum: 'off' as const } },
    ],
  };
  let macs = new Set<string>();
  await withLab(topology, async (lab) => {
    macs = await macsIn(lab.nodes().map((n) => lab.netns(n)));
    const mtu = async (host: string, dev: string) =>
      (JSON.parse((await lab.exec(host, ['ip', '-j', 'link', 'show', dev], { check: true })).stdout) as Array<{ mtu: number }>)[0]!.mtu;
    assert.equal(await mtu('h1', 'eth0'), 1400);
    assert.equal(await mtu('r', 'eth0'), 1400);
    assert.equal(await mtu('r', 'eth1'), 1500);
    // 1372 bytes of ICMP payload + 28 of headers fit in 1400; one more does not (DF set).
    assert.equal((await ping(lab, 'h1', lab.address('r', 4), { count: 1, size: 1372, dontFragment: true })).received, 1);
    const tooBig = await ping(lab, 'h1', lab.address('r', 4), { count: 1, size: 1373, dontFragment: true });
    assert.equal(tooBig.received, 0);
    // Routed across the two links, both families.
    assert.equal((await ping(lab, 'h1', lab.address('h3', 4), { count: 2 })).ttls.join(','), '63,63');
    assert.equal((await ping(lab, 'h1', lab.address('h3', 6), { count: 2 })).received, 2);
    const features = await lab.exec('h3', ['ethtool', '-k', 'eth0'], { check: true });
    assert.match(features.stdout, /^tx-checksumming: off/m);
    assert.match(features.stdout, /^rx-checksumming: off/m);
    const rFeatures = await lab.exec('r', ['ethtool', '-k', 'eth1'], { check: true });
    assert.match(rFeatures.stdout, /^tx-checksumming: on/m);
    const details = await lab.exec('h3', ['ip', '-d', 'link', 'show', 'eth0'], { check: true });
    assert.match(details.stdout, /gso_max_segs 1\b/);
  }, { name });
  await assertLabGone(name, macs);
});

kernelTest('up twice: the second says the lab exists and the first keeps working', async () => {
  const name = uniqueName('lt');
  await using lab = await Lab.up(undefined, { name });
  await assert.rejects(Lab.up(undefined, { name }), (err: unknown) => {
    assert.ok(err instanceof LabExistsError);
    assert.match(err.message, new RegExp(`^lab "${name}" already exists`));
    assert.match(err.hint ?? '', new RegExp(`netmangle lab down ${name}`));
    return true;
  });
  assert.equal((await ping(lab, 'h1', 'h2', { count: 1 })).received, 1);
});

kernelTest('await using takes the lab down at the end of the block, and withLab after a throw', async () => {
  const name = uniqueName('lt');
  {
    await using lab = await Lab.up(undefined, { name });
    assert.equal((await lab.exec('h2', ['true'])).code, 0);
  }
  await assertLabGone(name);
  await assert.rejects(
    withLab(undefined, async () => {
      throw new Error('test body failed');
    }, { name }),
    /test body failed/,
  );
  await assertLabGone(name);
});

kernelTest('exec returns exit codes and output; spawned processes die with the lab', async () => {
  const name = uniqueName('lt');
  const lab = await Lab.up(undefined, { name });
  let sleeper: ChildProcess | undefined;
  try {
    const r = await lab.exec('h1', ['sh', '-c', 'echo out; echo err >&2; exit 3']);
    assert.deepEqual([r.code, r.stdout, r.stderr], [3, 'out\n', 'err\n']);
    await assert.rejects(lab.exec('h1', ['false'], { check: true }), /in h1: `false` exited with 1/);
    assert.throws(() => lab.netns('h9'), /no host "h9" in lab/);
    sleeper = lab.spawn('h2', ['sleep', '60']);
    await new Promise((res) => sleeper!.once('spawn', res));
  } finally {
    await lab.down();
  }
  assert.ok(sleeper);
  if (sleeper.exitCode === null && sleeper.signalCode === null) await new Promise((res) => sleeper!.once('exit', res));
  assert.equal(sleeper.signalCode, 'SIGKILL');
  await assertLabGone(name);
});

kernelTest('measurements: TCP transfer counted at the receiver, nstat deltas', async () => {
  await using lab = await Lab.up(undefined, { name: uniqueName('lt') });
  await lab.exec('h1', ['ip', 'link', 'set', 'dev', 'eth0', 'gso_max_segs', '1'], { check: true });
  const before = await nstatSnapshot(lab, 'h2');
  assert.ok('TcpInSegs' in before);
  const t = await tcpTransfer(lab, 'h1', 'h2', { bytes: 2_000_000 });
  const after = await nstatSnapshot(lab, 'h2');
  // Every byte the receiving application read was seen on its wire (retransmissions add some).
  assert.ok(t.bytesReceived > 0 && t.bytesReceived <= t.bytesSent);
  assert.ok(t.payloadBytes >= t.bytesReceived, `captured ${t.payloadBytes} of ${t.bytesReceived}`);
  // One segment per packet: about bytes / MSS data segments, few with PSH.
  assert.ok(t.dataSegments >= Math.floor(t.bytesReceived / 1448), `only ${t.dataSegments} data segments`);
  assert.ok(t.pshShare < 0.5, `PSH share ${t.pshShare}`);
  assert.ok(nstatDelta(before, after, ['TcpInSegs']).TcpInSegs! >= t.dataSegments - t.captureDropped);
  assert.equal(nstatDelta(before, after).TcpInCsumErrors, 0);
});

kernelTest('a build step that fails takes down what was built and says which step', async () => {
  const name = uniqueName('lt');
  // Valid on paper, refused by the kernel: the gateway is on no subnet of h1.
  const topology = { switch: 'sw', hosts: { h1: { routes: [{ to: '198.18.7.0/24', via: '198.18.99.1' }] }, h2: {} } };
  await assert.rejects(Lab.up(topology, { name }), /add route 198\.18\.7\.0\/24 via 198\.18\.99\.1 on h1: `ip -n nm-\w+-h1 -4 route add/);
  await assertLabGone(name);
});
