/**
 * The article's trigger live: `netmangle run … 'tcp.flags.push => set ip.dsfield.dscp = 46'
 * --first 1 --per-connection` on h1's egress, 8 parallel iperf3 connections to h2; the
 * receiver's capture must show DSCP 46 on exactly one segment of every connection.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../../src/lab/index.js';
import { kernelTest, uniqueName } from '../helpers/kernel.js';
import { startRun } from './lab-support.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

kernelTest('lab: --first 1 --per-connection marks exactly one PSH segment of each of 8 parallel connections', async () => {
  const lab = await Lab.up(undefined, { name: uniqueName('ft') });
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-faults-'));
  try {
    const file = join(dir, 'h2.pcap');
    const h2 = lab.address('h2');
    const tcpdump = lab.spawn('h2', ['tcpdump', '-i', 'eth0', '-nn', '-s', '96', '-U', '-Z', 'root', '-w', file, `tcp and dst host ${h2} and dst port 5201`]);
    const server = lab.spawn('h2', ['iperf3', '-s', '-1', '-B', h2, '-p', '5201']);
    await sleep(1000);
    const run = await startRun([
      '--netns', lab.netns('h1'), '--dev', 'eth0', '--hook', 'egress', '--per-segment', '--seed', '1',
      'tcp.flags.push => set ip.dsfield.dscp = 46', '--first', '1', '--per-connection',
    ]);
    let stopped;
    try {
      const client = await lab.exec('h1', ['iperf3', '-c', h2, '-p', '5201', '-P', '8', '-n', '4M'], { timeoutMs: 30_000 });
      assert.equal(client.code, 0, client.stderr || client.stdout);
      await sleep(500);
    } finally {
      stopped = await run.stop();
      tcpdump.kill('SIGINT');
      server.kill('SIGKILL');
      await sleep(500);
    }
    assert.equal(stopped.code, 0, stopped.output);
    const read = async (filter: string): Promise<Map<number, number>> => {
      const r = await lab.exec('h2', ['tcpdump', '-nn', '-r', file, filter]);
      const perPort = new Map<number, number>();
      for (const m of r.stdout.matchAll(/\.(\d+) > [\d.]+\.5201:/g)) perPort.set(Number(m[1]), (perPort.get(Number(m[1])) ?? 0) + 1);
      return perPort;
    };
    const psh = await read('tcp[tcpflags] & tcp-push != 0');
    const marked = await read('ip[1] & 0xfc == 0xb8');
    // 8 data connections and iperf3's control connection, each with PSH segments.
    assert.ok(psh.size >= 9, `connections with PSH: ${psh.size}`);
    assert.deepEqual([...marked.keys()].sort(), [...psh.keys()].sort(), 'every connection that sent PSH has a marked segment');
    for (const [port, n] of marked) assert.equal(n, 1, `connection from port ${port}: ${n} segments with DSCP 46`);
    const counts = stopped.counters['rule-1']!;
    assert.equal(counts.acted, psh.size, stopped.output);
    assert.ok(counts.matched! > counts.acted!, stopped.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await lab.down();
  }
}, { timeout: 120_000 });
