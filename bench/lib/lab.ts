/**
 * The bench's lab: two hosts joined by one veth pair (h1 eth0 ── h2 eth0), built with src/lab
 * under a name unique to this run and taken down by the cleanup stack whatever happens, plus
 * iperf3 helpers (a server kept running on h2, clients on h1).
 */
import type { ChildProcess } from 'node:child_process';
import { NetmangleError } from '../../src/errors.js';
import { Lab } from '../../src/lab/index.js';
import { onCleanup } from './cleanup.js';
import type { BenchContext } from './context.js';

export const SENDER = 'h1';
export const RECEIVER = 'h2';
export const DEV = 'eth0';
export const IPERF_PORT = 5201;

export interface BenchLab {
  lab: Lab;
  /** Namespace of the sender (where programs are attached, at eth0 egress). */
  senderNs: string;
  receiverNs: string;
  receiverAddress: string;
  down(): Promise<void>;
}

export async function benchLab(ctx: BenchContext, purpose: string): Promise<BenchLab> {
  const name = `nmb-${ctx.runId}-${purpose}`.slice(0, 32);
  const lab = await Lab.up({ hosts: { [SENDER]: {}, [RECEIVER]: {} }, links: [{ a: SENDER, b: RECEIVER }] }, { name });
  const down = onCleanup(`lab ${name}`, () => lab.down());
  return { lab, senderNs: lab.netns(SENDER), receiverNs: lab.netns(RECEIVER), receiverAddress: lab.address(RECEIVER), down };
}

function waitFor(child: ChildProcess, pattern: RegExp, what: string, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => finish(new NetmangleError(`${what} not ready after ${timeoutMs} ms: ${seen.trim()}`)), timeoutMs);
    const onData = (d: Buffer) => {
      seen += d.toString();
      if (pattern.test(seen)) finish();
    };
    const onExit = () => finish(new NetmangleError(`${what} exited: ${seen.trim()}`));
    const finish = (err?: Error) => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.on('exit', onExit);
  });
}

/** Starts an iperf3 server on the receiver (it serves one client after another until the lab goes down). */
export async function startIperfServer(l: BenchLab, port = IPERF_PORT): Promise<void> {
  const server = l.lab.spawn(RECEIVER, ['iperf3', '-s', '--forceflush', '-B', l.receiverAddress, '-p', String(port)]);
  await waitFor(server, /Server listening/, 'iperf3 server');
  // Keep draining its output so it never blocks on a full pipe.
  server.stdout?.resume();
  server.stderr?.resume();
}

export interface IperfOptions {
  /** How long to send; or `bytes`. */
  seconds?: number;
  /** How much to send (iperf3 -n), instead of a duration. */
  bytes?: number;
  udp?: boolean;
  /** Target bit rate, e.g. '500M' (UDP; iperf3's default is 1 Mbit/s for UDP). */
  bitrate?: string;
  /** Bytes per write (UDP: datagram payload size). */
  length?: number;
  port?: number;
}

export interface IperfResult {
  /** Bits per second the receiver got (TCP), or the sender's rate (UDP). */
  bitsPerSecond: number;
  retransmits: number;
  /** UDP: datagrams the client sent (iperf3's sum_sent.packets), when it reports them. */
  packetsSent?: number;
}

/** Runs an iperf3 client on the sender against the server on the receiver. */
export async function iperfClient(l: BenchLab, o: IperfOptions): Promise<IperfResult> {
  const argv = ['iperf3', '-c', l.receiverAddress, '-p', String(o.port ?? IPERF_PORT), '-J'];
  if (o.bytes !== undefined) argv.push('-n', String(o.bytes));
  else argv.push('-t', String(o.seconds ?? 10));
  if (o.udp) argv.push('-u');
  if (o.bitrate) argv.push('-b', o.bitrate);
  if (o.length) argv.push('-l', String(o.length));
  const r = await l.lab.exec(SENDER, argv, { timeoutMs: ((o.seconds ?? 10) + 20) * 1000 });
  let report: { error?: string; end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { bits_per_second?: number; retransmits?: number; packets?: number }; sum?: { bits_per_second?: number } } };
  try {
    report = JSON.parse(r.stdout) as typeof report;
  } catch {
    throw new NetmangleError(`iperf3 client failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n').pop() ?? ''}`);
  }
  if (report.error) throw new NetmangleError(`iperf3 client: ${report.error}`);
  const end = report.end ?? {};
  const bps = o.udp ? (end.sum?.bits_per_second ?? 0) : (end.sum_received?.bits_per_second ?? 0);
  return { bitsPerSecond: bps, retransmits: end.sum_sent?.retransmits ?? 0, packetsSent: o.udp ? end.sum_sent?.packets : undefined };
}
