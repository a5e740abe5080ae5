/**
 * Measurements inside a lab, for the demo and end-to-end tests: ping with the TTL of every
 * reply, a TCP bulk transfer with the share of PSH segments as the receiver sees them, and
 * kernel counters (nstat) before and after.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { NetmangleError } from '../errors.js';
import type { Lab } from './lab.js';

// ───────────────────────────── ping ─────────────────────────────

export interface PingReply {
  seq: number;
  /** TTL (IPv4) or hop limit (IPv6) of the reply as received. */
  ttl: number;
  rttMs: number;
}

export interface PingResult {
  target: string;
  sent: number;
  received: number;
  replies: PingReply[];
  /** The replies' TTLs in arrival order. */
  ttls: number[];
  /** ping's exit code: 0 when at least one reply came back. */
  code: number;
  output: string;
}

export interface PingOptions {
  count?: number;
  /** Seconds between requests (below 0.2 needs root, which a lab has). */
  intervalS?: number;
  /** Seconds to wait for the last reply. */
  waitS?: number;
  /** Payload size in bytes (`ping -s`). */
  size?: number;
  /** Forbid fragmentation (`-M do`), to probe an MTU. */
  dontFragment?: boolean;
}

/** Parses iputils `ping` output: one reply per `… icmp_seq=N ttl=T time=X ms` line, then the totals. */
export function parsePing(output: string, target = ''): Omit<PingResult, 'code'> {
  const replies: PingReply[] = [];
  for (const line of output.split('\n')) {
    const m = /icmp_seq=(\d+)\s+ttl=(\d+)\s+time=([\d.]+)\s*ms/.exec(line);
    if (m) replies.push({ seq: Number(m[1]), ttl: Number(m[2]), rttMs: Number(m[3]) });
  }
  const totals = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(output);
  return {
    target,
    sent: totals ? Number(totals[1]) : replies.length,
    received: totals ? Number(totals[2]) : replies.length,
    replies,
    ttls: replies.map((r) => r.ttl),
    output,
  };
}

/** Pings `target` (an address, or a host of the lab: its IPv4 address) from `from`. */
export async function ping(lab: Lab, from: string, target: string, opts: PingOptions = {}): Promise<PingResult> {
  const address = lab.hosts.includes(target) ? lab.address(target, 4) : target;
  const count = opts.count ?? 5;
  const interval = opts.intervalS ?? 0.1;
  const argv = ['ping', '-n', '-c', String(count), '-i', String(interval), '-W', String(opts.waitS ?? 1)];
  if (opts.size !== undefined) argv.push('-s', String(opts.size));
  if (opts.dontFragment) argv.push('-M', 'do');
  argv.push(address);
  const r = await lab.exec(from, argv, { timeoutMs: (count * interval + (opts.waitS ?? 1) + 5) * 1000 });
  return { ...parsePing(r.stdout, address), code: r.code, output: r.stdout + r.stderr };
}

// ───────────────────────────── TCP transfer and PSH share ─────────────────────────────

export interface PshCount {
  /** TCP segments with payload in the counted flow. */
  dataSegments: number;
  /** Of those, segments with PSH set. */
  pshSegments: number;
  /** pshSegments / dataSegments (0 when there was no data). */
  pshShare: number;
  /** Payload bytes in the counted flow. */
  payloadBytes: number;
}

interface FlowCount {
  data: number;
  psh: number;
  bytes: number;
}

/**
 * Counts data segments and PSH among them in a pcap capture (Ethernet link type, IPv4 or
 * IPv6, no extension headers), per TCP flow, and returns the flow that carried the most
 * payload: a bulk transfer's control connection (iperf3 has one) is not counted.
 */
export function countPshInPcap(pcap: Uint8Array): PshCount {
  const view = new DataView(pcap.buffer, pcap.byteOffset, pcap.byteLength);
  if (pcap.byteLength < 24) throw new NetmangleError('capture file is too short to be a pcap file');
  const magicBE = view.getUint32(0, false);
  let little: boolean;
  if (magicBE === 0xa1b2c3d4 || magicBE === 0xa1b23c4d) little = false;
  else if (magicBE === 0xd4c3b2a1 || magicBE === 0x4d3cb2a1) little = true;
  else throw new NetmangleError('capture file is not a pcap file (pcapng is not read here)');
  const linkType = view.getUint32(20, little);
  if (linkType !== 1) throw new NetmangleError(`capture has link type ${linkType}; only Ethernet (1) is counted`);

  const flows = new Map<string, FlowCount>();
  let off = 24;
  while (off + 16 <= pcap.byteLength) {
    const incl = view.getUint32(off + 8, little);
    const start = off + 16;
    off = start + incl;
    if (off > pcap.byteLength) break;
    let p = start + 12;
    if (p + 2 > off) continue;
    let etherType = view.getUint16(p, false);
    p += 2;
    while ((etherType === 0x8100 || etherType === 0x88a8) && p + 4 <= off) {
      etherType = view.getUint16(p + 2, false);
      p += 4;
    }
    let l4: number;
    let l4Len: number;
    let src: string;
    let dst: string;
    if (etherType === 0x0800) {
      if (p + 20 > off || view.getUint8(p + 9) !== 6) continue;
      const ihl = (view.getUint8(p) & 0x0f) * 4;
      l4Len = view.getUint16(p + 2, false) - ihl;
      src = Array.from(pcap.subarray(p + 12, p + 16)).join('.');
      dst = Array.from(pcap.subarray(p + 16, p + 20)).join('.');
      l4 = p + ihl;
    } else if (etherType === 0x86dd) {
      if (p + 40 > off || view.getUint8(p + 6) !== 6) continue;
      l4Len = view.getUint16(p + 4, false);
      src = Buffer.from(pcap.subarray(p + 8, p + 24)).toString('hex');
      dst = Buffer.from(pcap.subarray(p + 24, p + 40)).toString('hex');
      l4 = p + 40;
    } else continue;
    if (l4 + 14 > off) continue;
    const tcpHdr = (view.getUint8(l4 + 12) >> 4) * 4;
    const flags = view.getUint8(l4 + 13);
    const payload = l4Len - tcpHdr;
    if (payload <= 0) continue;
    const key = `${src}:${view.getUint16(l4, false)}>${dst}:${view.getUint16(l4 + 2, false)}`;
    const f = flows.get(key) ?? { data: 0, psh: 0, bytes: 0 };
    f.data += 1;
    f.bytes += payload;
    if (flags & 0x08) f.psh += 1;
    flows.set(key, f);
  }
  let best: FlowCount = { data: 0, psh: 0, bytes: 0 };
  for (const f of flows.values()) if (f.bytes > best.bytes) best = f;
  return { dataSegments: best.data, pshSegments: best.psh, pshShare: best.data === 0 ? 0 : best.psh / best.data, payloadBytes: best.bytes };
}

export interface TransferOptions {
  /** Bytes to send (default 8 MB). */
  bytes?: number;
  family?: 4 | 6;
  port?: number;
  /** Receiver's interface to capture on (default eth0). */
  captureDev?: string;
  timeoutMs?: number;
}

export interface TransferResult extends PshCount {
  /** Bytes the sender wrote into its socket, per iperf3 (a tail may never be delivered). */
  bytesSent: number;
  /** Bytes the receiving application read, per iperf3's server. */
  bytesReceived: number;
  seconds: number;
  bitsPerSecond: number;
  retransmits: number;
  /** Packets the receiver's capture lost (tcpdump's "dropped by kernel"); counts are low by this much. */
  captureDropped: number;
}

function waitForOutput(child: ChildProcess, stream: 'stdout' | 'stderr', pattern: RegExp, what: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const onData = (d: Buffer | string) => {
      seen += d.toString();
      if (pattern.test(seen)) done();
    };
    const onExit = () => {
      cleanup();
      reject(new NetmangleError(`${what} exited before it was ready: ${seen.trim().split('\n').pop() ?? ''}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new NetmangleError(`${what} was not ready after ${timeoutMs} ms: ${seen.trim().split('\n').pop() ?? ''}`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      child[stream]!.off('data', onData);
      child.off('exit', onExit);
    };
    const done = () => {
      cleanup();
      resolve();
    };
    child[stream]!.on('data', onData);
    child.on('exit', onExit);
  });
}

function collect(child: ChildProcess, stream: 'stdout' | 'stderr'): () => string {
  let text = '';
  child[stream]?.on('data', (d: Buffer | string) => (text += d.toString()));
  return () => text;
}

function exited(child: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Sends `bytes` over TCP from `from` to `to` with iperf3 while tcpdump records the receiver's
 * interface, then counts data segments and PSH as the receiver saw them.
 */
export async function tcpTransfer(lab: Lab, from: string, to: string, opts: TransferOptions = {}): Promise<TransferResult> {
  const family = opts.family ?? 4;
  const port = opts.port ?? 5201;
  const bytes = opts.bytes ?? 8_000_000;
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const dst = lab.address(to, family);
  const src = lab.address(from, family);
  const dir = mkdtempSync(join(tmpdir(), 'netmangle-capture-'));
  const file = join(dir, 'receiver.pcap');
  // -Z root: tcpdump drops to its own user before opening the file otherwise.
  const tcpdump = lab.spawn(to, [
    'tcpdump', '-i', opts.captureDev ?? 'eth0', '-nn', '-s', '128', '-B', '16384', '--immediate-mode', '-U', '-Z', 'root', '-w', file,
    `tcp and src host ${src} and dst port ${port}`,
  ]);
  const tcpdumpErr = collect(tcpdump, 'stderr');
  const server = lab.spawn(to, ['iperf3', '-s', '-1', '--forceflush', '-B', dst, '-p', String(port)]);
  try {
    await waitForOutput(tcpdump, 'stderr', /listening on/, 'tcpdump on the receiver', 5000);
    await waitForOutput(server, 'stdout', /Server listening/, 'iperf3 server', 5000);
    const client = await lab.exec(from, ['iperf3', '-c', dst, '-p', String(port), '-n', String(bytes), '-J'], { timeoutMs });
    let report: IperfReport;
    try {
      report = JSON.parse(client.stdout) as IperfReport;
    } catch {
      throw new NetmangleError(`iperf3 client in ${from} failed (exit ${client.code}): ${(client.stderr || client.stdout).trim().split('\n').pop() ?? ''}`);
    }
    if (report.error) throw new NetmangleError(`iperf3 client in ${from}: ${report.error}`);
    // tcpdump may lag behind the traffic on a busy machine, and what it has not read when it
    // stops is lost without being counted as dropped: wait until the file holds every byte.
    const receivedBytes = report.end?.sum_received?.bytes ?? 0;
    const settleUntil = Date.now() + 3000;
    let lastSize = -1;
    while (Date.now() < settleUntil) {
      await new Promise((res) => setTimeout(res, 50));
      const partial = readFileSync(file);
      if (partial.byteLength === lastSize && countPshInPcap(partial).payloadBytes >= receivedBytes) break;
      lastSize = partial.byteLength;
    }
    tcpdump.kill('SIGINT');
    await exited(tcpdump, 3000);
    const dropped = /(\d+) packets? dropped by kernel/.exec(tcpdumpErr());
    const counts = countPshInPcap(readFileSync(file));
    const sent = report.end?.sum_sent;
    return {
      ...counts,
      bytesSent: sent?.bytes ?? 0,
      bytesReceived: receivedBytes,
      seconds: sent?.seconds ?? 0,
      bitsPerSecond: sent?.bits_per_second ?? 0,
      retransmits: sent?.retransmits ?? 0,
      captureDropped: dropped ? Number(dropped[1]) : 0,
    };
  } finally {
    for (const c of [tcpdump, server]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Promise.all([exited(tcpdump, 1000), exited(server, 1000)]);
    rmSync(dir, { recursive: true, force: true });
  }
}

interface IperfReport {
  error?: string;
  end?: {
    sum_sent?: { bytes: number; seconds: number; bits_per_second: number; retransmits?: number };
    sum_received?: { bytes: number };
  };
}

// ───────────────────────────── nstat ─────────────────────────────

/** Counters that show a receiver rejecting what a rule broke, or reordering. */
export const INTERESTING_COUNTERS = [
  'TcpInCsumErrors',
  'UdpInCsumErrors',
  'IcmpInCsumErrors',
  'IpExtInCsumErrors',
  'IpInHdrErrors',
  'TcpExtTCPOFOQueue',
] as const;

export type Counters = Record<string, number>;

/** Parses `nstat -a` output (`Name  value  rate` lines). */
export function parseNstat(output: string): Counters {
  const out: Counters = {};
  for (const line of output.split('\n')) {
    const m = /^([A-Za-z][A-Za-z0-9]*)\s+(\d+)/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** All of a namespace's SNMP and netstat counters, absolute (zeros included). */
export async function nstatSnapshot(lab: Lab, host: string): Promise<Counters> {
  // -a absolute, -z zeros too, -s leave nstat's shared history file alone.
  const r = await lab.exec(host, ['nstat', '-azs'], { check: true });
  return parseNstat(r.stdout);
}

/** after − before for the named counters (all counters of `after` when names is omitted). */
export function nstatDelta(before: Counters, after: Counters, names: readonly string[] = INTERESTING_COUNTERS): Counters {
  const out: Counters = {};
  for (const n of names.length ? names : Object.keys(after)) out[n] = (after[n] ?? 0) - (before[n] ?? 0);
  return out;
}
