/**
 * The field bug of the delay article, reproduced in a lab: on each of 8 parallel TCP
 * connections the first PSH segment carrying bulk data is held 2 ms at the sender's tc egress, so
 * later segments of the same connection overtake it. The receiver's kernel must see out-of-order
 * segments on every connection (tcp_info rcv_ooopack, sampled with `ss` during the transfer) and
 * TcpExtTCPOFOQueue must grow; the same transfer without the rule must show none.
 *
 * The issue's own command, `tcp.flags.push => delay 2ms --first 1 --per-connection`, as it is,
 * at the egress of a host that sends bulk data on connections it accepted (iperf3 -R: the server
 * sends): there the first PSH segment of each data connection carries data and more follows it.
 *
 * Sender and receiver are pinned to CPU 0 because veth reorders by itself when a flow's segments
 * land in both CPUs' backlogs (KERNEL-NOTES). `tcp.len > 100` (as docs/delay.md shows it) skips iperf3's 37-byte cookie, the
 * first PSH segment of each data connection, which nothing follows for a while and so nothing
 * overtakes.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { Lab, nstatDelta, nstatSnapshot } from '../../src/lab/index.js';
import { startRun } from '../faults/lab-support.js';
import { kernelTest, scaled, uniqueName } from '../helpers/kernel.js';

const TOPOLOGY: Parameters<typeof Lab.up>[0] = { hosts: { h1: {}, h2: {} }, links: [{ a: 'h1', b: 'h2' }] };
const RULE = 'tcp.flags.push and tcp.len > 100 => delay 2ms';
const CONNECTIONS = 8;
const PORT = '5201';
/** Seconds each transfer lasts: long enough for `ss` to be sampled during it, also on a slow machine. */
const TRANSFER_S = Math.ceil(scaled(3000) / 1000);

interface Transfer {
  ofo: number;
  /** rcv_ooopack of each established data connection at h2, sampled near the end of the transfer. */
  perConnection: number[];
  gbps: number;
  /** How many times ss was sampled during the transfer. */
  samples: number;
}

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.on('close', () => resolve());
  });
}

/** iperf3 from h1 to the server on h2; `reverse`: the server sends (-R), h1 receives. */
async function transfer(lab: Lab, reverse = false): Promise<Transfer> {
  const receiver = reverse ? 'h1' : 'h2';
  const server = lab.spawn('h2', ['taskset', '-c', '0', 'iperf3', '-s', '-1', '-p', PORT]);
  const serverDone = waitExit(server);
  try {
    // Until the server listens (a fixed wait is too short on a slow machine).
    for (let i = 0; ; i++) {
      const listening = await lab.exec('h2', ['ss', '-tlnH', 'sport', '=', `:${PORT}`]);
      if (listening.stdout.trim() !== '') break;
      if (i >= 200) assert.fail('iperf3 -s did not listen within 20 s');
      await new Promise((r) => setTimeout(r, 100));
    }
    const before = await nstatSnapshot(lab, receiver);
    const client = lab.exec('h1', ['taskset', '-c', '0', 'iperf3', '-c', lab.address('h2'), '-p', PORT, '-P', String(CONNECTIONS), '-t', String(TRANSFER_S), '-J', ...(reverse ? ['-R'] : [])], { timeoutMs: scaled(30_000) + TRANSFER_S * 1000 });
    let clientDone = false;
    void client.finally(() => { clientDone = true; });
    // ss prints each socket on a line of its own followed by an indented line of tcp_info; the data
    // connections are those that received bulk data (the control connection receives a few bytes).
    // A connection that saw no out-of-order packet prints no rcv_ooopack: that is 0. Sampled
    // while the transfer runs; the last sample that saw every data connection counts (the
    // counters only grow), so no guess of when the transfer is under way is needed.
    let perConnection: number[] = [];
    let samples = 0;
    while (!clientDone) {
      samples += 1;
      const ss = await lab.exec(receiver, ['ss', '-tinH', 'state', 'established', reverse ? 'dport' : 'sport', '=', `:${PORT}`], { check: true });
      const sample = ss.stdout
        .split(/\n(?=\S)/)
        .filter((sock) => Number(/bytes_received:(\d+)/.exec(sock)?.[1] ?? 0) > 1_000_000)
        .map((sock) => Number(/rcv_ooopack:(\d+)/.exec(sock)?.[1] ?? 0));
      if (sample.length >= perConnection.length) perConnection = sample;
      await new Promise((r) => setTimeout(r, 200));
    }
    const result = await client;
    assert.equal(result.code, 0, result.stderr || result.stdout);
    const after = await nstatSnapshot(lab, receiver);
    const gbps = (JSON.parse(result.stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
    return { ofo: nstatDelta(before, after, ['TcpExtTCPOFOQueue'])['TcpExtTCPOFOQueue']!, perConnection, gbps, samples };
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGTERM');
    await serverDone;
  }
}

/**
 * Transfers without and with `rule` (--first 1 --per-connection) at the egress of the host that
 * sends the data (h1, or h2 with `reverse`), and checks the receiver's counters.
 */
async function reproduce(t: { diagnostic(msg: string): void }, rule: string, reverse: boolean): Promise<void> {
  const lab = await Lab.up(TOPOLOGY, { name: uniqueName(reverse ? 'ofr' : 'ofo') });
  try {
    const without = await transfer(lab, reverse);
    const run = await startRun(['--netns', lab.netns(reverse ? 'h2' : 'h1'), '--dev', 'eth0', '--hook', 'egress', rule, '--first', '1', '--per-connection']);
    let withRule: Transfer;
    try {
      withRule = await transfer(lab, reverse);
    } finally {
      const stopped = await run.stop();
      assert.equal(stopped.code, 0, stopped.output);
      // At least one per data connection (and maybe iperf3's control connection).
      assert.ok((stopped.counters['rule-1']?.acted ?? 0) >= CONNECTIONS, stopped.output);
    }
    t.diagnostic(`without: OFO ${without.ofo}, ${without.gbps.toFixed(1)} Gb/s; with: OFO ${withRule.ofo}, per connection ${withRule.perConnection.join(' ')}, ${withRule.gbps.toFixed(1)} Gb/s`);
    assert.equal(without.ofo, 0, 'no out-of-order segments without the rule');
    assert.ok(withRule.ofo >= CONNECTIONS, `TcpExtTCPOFOQueue ${withRule.ofo} with the rule`);
    assert.equal(withRule.perConnection.length, CONNECTIONS, `data connections seen by ss (${withRule.samples} samples): ${withRule.perConnection.join(' ')}`);
    for (const n of withRule.perConnection) assert.ok(n >= 1, `every connection saw out-of-order packets: ${withRule.perConnection.join(' ')}`);
  } finally {
    await lab.down();
  }
}

kernelTest(`lab: '${RULE}' --first 1 --per-connection makes the receiver count out-of-order segments on each of ${CONNECTIONS} connections; none without the rule`, (t) => reproduce(t, RULE, false), { timeout: 120_000 });

const ISSUE_RULE = 'tcp.flags.push => delay 2ms';

kernelTest(
  `lab: the issue's own '${ISSUE_RULE}' --first 1 --per-connection at the sending server's egress (iperf3 -R): out-of-order segments on each of ${CONNECTIONS} connections at the receiver`,
  (t) => reproduce(t, ISSUE_RULE, true),
  { timeout: 120_000 },
);
