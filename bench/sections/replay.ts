/**
 * 4. Offline replay: `netmangle replay` with a set-TTL rule (JIT engine) against
 * `tcprewrite --ttl=set:N --fixcsum` on the same capture, made here from real lab traffic,
 * and on one twice as big (peak memory must not grow with the file).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { NetmangleError } from '../../src/errors.js';
import { onCleanup } from '../lib/cleanup.js';
import { forEachPacket } from '../../src/pcap/index.js';
import { checksum } from '../lib/packets.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV, iperfClient, SENDER, startIperfServer, type BenchLab } from '../lib/lab.js';
import { int, ms, ratio, sig, table, verdict } from '../lib/report.js';
import { BENCH_SEED } from '../lib/rules.js';
import { interleave, max, median, medianRatio, min } from '../lib/stats.js';

export const TTL_VALUE = 7;
export const REPLAY_RULE = `ip => set ip.ttl = ${TTL_VALUE}`;
const SNAPLEN = 128;
const MAX_PHASES = 300;

/**
 * Runs a command as a child of a tiny Python harness that reports the child's wall time and
 * peak resident set size (getrusage RUSAGE_CHILDREN), so both tools are measured the same way.
 */
const HARNESS = [
  'import resource, subprocess, sys, time',
  't = time.perf_counter()',
  'r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)',
  'e = time.perf_counter() - t',
  'u = resource.getrusage(resource.RUSAGE_CHILDREN)',
  'print(r.returncode, e, u.ru_maxrss)',
  'sys.stdout.write(r.stderr.decode(errors="replace")[-500:])',
].join('\n');

interface Measured {
  seconds: number;
  maxRssKiB: number;
}

function measureCommand(argv: string[]): Measured {
  const r = spawnSync('python3', ['-c', HARNESS, ...argv], { encoding: 'utf8' });
  const [first, ...rest] = (r.stdout ?? '').split('\n');
  const [code, seconds, rss] = (first ?? '').split(' ').map(Number);
  if (r.status !== 0 || code !== 0) {
    throw new NetmangleError(`\`${argv.join(' ')}\` failed (exit ${code}): ${(rest.join('\n') || r.stderr || '').trim().split('\n').pop()}`);
  }
  return { seconds: seconds!, maxRssKiB: rss! };
}

/** netmangle's CLI, run the way a user runs it. */
export function replayAvailable(root: string): boolean {
  const r = spawnSync(join(root, 'bin', 'netmangle'), ['replay', '--help'], { encoding: 'utf8' });
  return r.status === 0 && /--engine/.test(r.stdout);
}

/**
 * Records `packets` packets (snap length 128) on the sender's eth0 while the lab carries ping
 * floods, iperf3 TCP and iperf3 UDP with small datagrams, phase after phase until tcpdump has
 * its count. Returns the mix it saw.
 */
async function recordCapture(ctx: BenchContext, l: BenchLab, file: string, packets: number): Promise<string[]> {
  const tcpdump = l.lab.spawn(SENDER, ['tcpdump', '-i', DEV, '-nn', '-s', String(SNAPLEN), '-B', '65536', '-U', '-Z', 'root', '-c', String(packets), '-w', file]);
  let stderr = '';
  tcpdump.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  tcpdump.stdout!.resume();
  const done = new Promise<void>((resolve) => tcpdump.on('close', () => resolve()));
  let finished = false;
  void done.then(() => (finished = true));
  const deadline = Date.now() + 5000;
  while (!/listening on/.test(stderr)) {
    if (finished || Date.now() > deadline) throw new NetmangleError(`tcpdump did not start: ${stderr.trim()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const phases: string[] = [];
  const target = l.receiverAddress;
  // Short phases, so that any prefix of the recording holds all three kinds of traffic.
  for (let phase = 0; !finished && phase < MAX_PHASES; phase++) {
    const kind = phase % 3;
    if (kind === 0) {
      await l.lab.exec(SENDER, ['ping', '-f', '-q', '-c', '5000', '-w', '2', target], { timeoutMs: 10_000 });
      phases.push('ping -f');
    } else if (kind === 1) {
      await iperfClient(l, { bytes: 100_000_000 });
      phases.push('iperf3 TCP');
    } else {
      await iperfClient(l, { bytes: 1_000_000, udp: true, bitrate: '100M', length: 64 });
      phases.push('iperf3 UDP');
    }
  }
  if (!finished) {
    tcpdump.kill('SIGINT');
    await done;
    throw new NetmangleError(`the lab's traffic did not reach ${packets} packets in ${MAX_PHASES} phases: ${stderr.trim().split('\n').pop()}`);
  }
  await done;
  ctx.log(`replay: captured ${packets} packets in ${phases.length} traffic phases`);
  return phases;
}

interface CaptureStats {
  packets: number;
  bytes: number;
  ipv4: number;
  ttlSet: number;
  /** IPv4 packets whose header checksum verifies. */
  headerSumOk: number;
  tcp: number;
  udp: number;
  icmp: number;
}

/** Counts packets and, among IPv4 ones, those whose TTL is TTL_VALUE. */
function inspect(file: string): CaptureStats {
  const s: CaptureStats = { packets: 0, bytes: statSync(file).size, ipv4: 0, ttlSet: 0, headerSumOk: 0, tcp: 0, udp: 0, icmp: 0 };
  forEachPacket(file, (p) => {
    s.packets++;
    const d = p.data;
    if (d.length >= 34 && d[12] === 0x08 && d[13] === 0x00) {
      s.ipv4++;
      if (d[22] === TTL_VALUE) s.ttlSet++;
      const headerEnd = 14 + (d[14]! & 0x0f) * 4;
      if (headerEnd <= d.length && checksum(d, 14, headerEnd) === 0) s.headerSumOk++;
      if (d[23] === 6) s.tcp++;
      else if (d[23] === 17) s.udp++;
      else if (d[23] === 1) s.icmp++;
    }
  });
  return s;
}

export async function measureReplay(ctx: BenchContext): Promise<SectionResult> {
  const title = '## 4. Offline replay';
  if (!replayAvailable(ctx.root)) {
    return { markdown: `${title}\n\nNot measured: replay not available (\`bin/netmangle replay --help\` failed in this build).\n`, headlines: ['offline replay: not measured: replay not available'] };
  }
  const small = ctx.quick ? 100_000 : 300_000;
  const rounds = ctx.quick ? 1 : 5;
  const big = join(ctx.tmp, 'replay-big.pcap');
  const smallFile = join(ctx.tmp, 'replay-small.pcap');
  const l = await benchLab(ctx, 'replay');
  let phases: string[];
  try {
    await startIperfServer(l);
    ctx.log(`replay: recording ${2 * small} packets of lab traffic`);
    phases = await recordCapture(ctx, l, big, 2 * small);
  } finally {
    await l.down();
  }
  const cut = spawnSync('tcpdump', ['-r', big, '-c', String(small), '-w', smallFile], { encoding: 'utf8' });
  if (cut.status !== 0 || !existsSync(smallFile)) throw new NetmangleError(`could not cut the small capture: ${cut.stderr.trim()}`);
  const onePacketFile = join(ctx.tmp, 'replay-one.pcap');
  const cutOne = spawnSync('tcpdump', ['-r', big, '-c', '1', '-w', onePacketFile], { encoding: 'utf8' });
  if (cutOne.status !== 0 || !existsSync(onePacketFile)) throw new NetmangleError(`could not cut the one-packet capture: ${cutOne.stderr.trim()}`);

  const bin = join(ctx.root, 'bin', 'netmangle');
  const rows: string[][] = [];
  const rssRows: string[][] = [];
  const headlines: string[] = [];
  const checks: string[] = [];
  const rss: Record<string, { nm: number; tr: number }> = {};
  const times: Array<{ packets: number; bytes: number; nm: number; tr: number }> = [];
  let smallStats: CaptureStats | undefined;
  // Outputs in memory (tmpfs) when there is one: writing tens of MB to disk and the write-back
  // after it add noise to both tools' times, round by round.
  const outDir = existsSync('/dev/shm') ? mkdtempSync(join('/dev/shm', 'nm-bench-')) : ctx.tmp;
  if (outDir !== ctx.tmp) onCleanup('remove the replay outputs in /dev/shm', () => rmSync(outDir, { recursive: true, force: true }));
  for (const [label, input] of [['capture', smallFile], ['capture ×2', big]] as const) {
    const inStats = inspect(input);
    smallStats ??= inStats;
    const nmOut = join(outDir, 'out-netmangle.pcap');
    const trOut = join(outDir, 'out-tcprewrite.pcap');
    const nmArgv = [bin, 'replay', REPLAY_RULE, input, '-o', nmOut, '--hook', 'xdp', '--engine', 'jit', '--seed', String(BENCH_SEED), '--no-progress'];
    // `--ttl=set:7` makes Debian's tcprewrite 4.4.3 write TTL 0 (the bench checks the output); the bare value sets 7.
    const trArgv = ['tcprewrite', `--ttl=${TTL_VALUE}`, '--fixcsum', `--infile=${input}`, `--outfile=${trOut}`];
    ctx.log(`replay: ${label}, ${int(inStats.packets)} packets: ${rounds} rounds of netmangle replay and tcprewrite`);
    // One untimed run of each: page cache, and a check that both did the job.
    measureCommand(nmArgv);
    measureCommand(trArgv);
    for (const [who, out] of [['netmangle', nmOut], ['tcprewrite', trOut]] as const) {
      const o = inspect(out);
      if (o.packets !== inStats.packets || o.ttlSet !== inStats.ipv4 || o.headerSumOk !== inStats.ipv4) {
        throw new NetmangleError(`${who} wrote ${o.packets} of ${inStats.packets} packets; of ${inStats.ipv4} IPv4 ones, ${o.ttlSet} with TTL ${TTL_VALUE} and ${o.headerSumOk} with a correct header checksum`);
      }
      checks.push(`${who} on the ${label}: ${int(o.packets)} packets out, all ${int(o.ttlSet)} IPv4 ones with TTL ${TTL_VALUE} and a correct header checksum`);
    }
    const nmRss: number[] = [];
    const trRss: number[] = [];
    const m = await interleave(rounds, [
      ['nm', () => { const r = measureCommand(nmArgv); nmRss.push(r.maxRssKiB); return r.seconds; }],
      ['tr', () => { const r = measureCommand(trArgv); trRss.push(r.maxRssKiB); return r.seconds; }],
    ] as const);
    const pps = (s: number) => inStats.packets / s;
    const mbps = (s: number) => inStats.bytes / s / 1e6;
    const r = medianRatio(m.tr, m.nm); // time ratio tcprewrite/netmangle = pps ratio netmangle/tcprewrite
    rows.push([
      label, `${int(inStats.packets)} (${sig(inStats.bytes / 1e6, 3)} MB)`,
      `${int(pps(median(m.nm)))} pkt/s, ${sig(mbps(median(m.nm)), 3)} MB/s (${ms(median(m.nm) * 1000)})`,
      `${int(pps(median(m.tr)))} pkt/s, ${sig(mbps(median(m.tr)), 3)} MB/s (${ms(median(m.tr) * 1000)})`,
      ratio(r), verdict(r >= 1),
    ]);
    rss[label] = { nm: median(nmRss), tr: median(trRss) };
    times.push({ packets: inStats.packets, bytes: inStats.bytes, nm: median(m.nm), tr: median(m.tr) });
    headlines.push(`offline replay, ${label} (${int(inStats.packets)} packets): netmangle/tcprewrite packets per second = ${ratio(r)} (goal ≥ 1)`);
  }
  // Start-up alone: both commands on a capture of one packet.
  const startRounds = ctx.quick ? 5 : 15;
  const oneNm = [bin, 'replay', REPLAY_RULE, onePacketFile, '-o', join(ctx.tmp, 'out-one-netmangle.pcap'), '--hook', 'xdp', '--engine', 'jit', '--seed', String(BENCH_SEED), '--no-progress'];
  const oneTr = ['tcprewrite', `--ttl=${TTL_VALUE}`, '--fixcsum', `--infile=${onePacketFile}`, `--outfile=${join(ctx.tmp, 'out-one-tcprewrite.pcap')}`];
  ctx.log(`replay: start-up, ${startRounds} rounds of each on a one-packet capture`);
  measureCommand(oneNm);
  measureCommand(oneTr);
  const one = await interleave(startRounds, [
    ['nm', () => measureCommand(oneNm).seconds],
    ['tr', () => measureCommand(oneTr).seconds],
  ] as const);
  const startRatio = medianRatio(one.tr, one.nm);
  headlines.push(`offline replay, start-up (one-packet capture): netmangle ${ms(median(one.nm) * 1000)}, tcprewrite ${ms(median(one.tr) * 1000)}`);
  // The second file minus the first: start-up and fixed costs cancel, leaving the rate per packet.
  const [t1, t2] = [times[0]!, times[1]!];
  const dp = t2.packets - t1.packets;
  const db = t2.bytes - t1.bytes;
  const dNm = t2.nm - t1.nm;
  const dTr = t2.tr - t1.tr;
  if (dNm > 0 && dTr > 0) {
    rows.push([
      'difference ×2 − ×1 (start-up cancels)', `${int(dp)} (${sig(db / 1e6, 3)} MB)`,
      `${int(dp / dNm)} pkt/s, ${sig(db / dNm / 1e6, 3)} MB/s (${ms(dNm * 1000)})`,
      `${int(dp / dTr)} pkt/s, ${sig(db / dTr / 1e6, 3)} MB/s (${ms(dTr * 1000)})`,
      ratio(dTr / dNm), verdict(dTr / dNm >= 1),
    ]);
    headlines.push(`offline replay, per-packet rate without start-up (difference of the two files): netmangle/tcprewrite = ${ratio(dTr / dNm)}`);
  } else {
    // The machine's noise exceeded the extra work: no rate can be read from it this run.
    rows.push(['difference ×2 − ×1 (start-up cancels)', `${int(dp)} (${sig(db / 1e6, 3)} MB)`, `${ms(dNm * 1000)}`, `${ms(dTr * 1000)}`, 'n/a', 'not measurable this run (a tool took no longer on the bigger file)']);
    headlines.push('offline replay, per-packet rate without start-up: not measurable this run (a tool took no longer on the bigger file)');
  }
  rows.push([
    'start-up: a capture of 1 packet', '1', `${ms(median(one.nm) * 1000)} (${ms(min(one.nm) * 1000)}–${ms(max(one.nm) * 1000)})`,
    `${ms(median(one.tr) * 1000)} (${ms(min(one.tr) * 1000)}–${ms(max(one.tr) * 1000)})`, ratio(startRatio), verdict(startRatio >= 1),
  ]);
  const a = rss['capture']!;
  const b = rss['capture ×2']!;
  rssRows.push(
    ['netmangle replay', `${int(a.nm / 1024)} MiB`, `${int(b.nm / 1024)} MiB`, ratio(b.nm / a.nm)],
    ['tcprewrite', `${int(a.tr / 1024)} MiB`, `${int(b.tr / 1024)} MiB`, ratio(b.tr / a.tr)],
  );
  headlines.push(`offline replay peak RSS, file ×2 / file: netmangle ${ratio(b.nm / a.nm)}, tcprewrite ${ratio(b.tr / a.tr)} (goal: flat, ≈ 1)`);
  const s = smallStats!;
  const md = [
    title,
    '',
    `A capture made by this run: tcpdump (snap length ${SNAPLEN}) on the sender's veth in a two-namespace lab while it carried, ` +
      `phase after phase until tcpdump had ${int(2 * small)} packets, \`ping -f -c 5000\`, \`iperf3 -n 100M\` (TCP) and \`iperf3 -u -l 64 -b 100M -n 1M\` ` +
      `(${phases.length} phases). The first ${int(small)} packets are the "capture", the whole recording the "capture ×2". ` +
      `Mix of the capture: ${int(s.tcp)} TCP, ${int(s.udp)} UDP, ${int(s.icmp)} ICMP, ${int(s.packets - s.ipv4)} not IPv4.`,
    '',
    `netmangle: \`bin/netmangle replay '${REPLAY_RULE}' IN -o OUT --hook xdp --engine jit --seed ${BENCH_SEED} --no-progress\` (the JIT to JavaScript). ` +
      `Anchor: \`tcprewrite --ttl=${TTL_VALUE} --fixcsum --infile=IN --outfile=OUT\` (the form \`--ttl=set:${TTL_VALUE}\` makes this tcprewrite write TTL 0; ` +
      'the bare value sets it, with the same work per packet). Both are whole commands, start-up included, timed from a Python harness ' +
      `that also reads each one's peak resident set size (getrusage). ${rounds} round${rounds === 1 ? '' : 's'} interleaved, medians; ` +
      'ratio: median over rounds of tcprewrite\'s time ÷ netmangle\'s, i.e. netmangle\'s packets per second ÷ tcprewrite\'s. Goal: ≥ 1. ' +
      'Both write their output to a memory file system (/dev/shm) when there is one, so that disk write-back does not add to either.',
    '',
    table(['file', 'packets', 'netmangle replay', 'tcprewrite', 'pps ratio', 'goal ≥ 1'], rows, ['l', 'r', 'r', 'r', 'r', 'l']),
    '',
    'The "difference" row divides the extra packets of the bigger file by the extra time each tool took on it (medians), which cancels ' +
      'start-up (Node.js and module loading for netmangle, a few ms for tcprewrite) and shows the rate per packet alone; its ratio is of medians, not per round. ' +
      `The last row is start-up alone: each command on a capture of one packet (its first), ${startRounds} rounds interleaved, median (range); ` +
      'for netmangle that is Node.js starting, the replay bundle, compiling the rule and writing one packet.',
    '',
    'Peak resident memory (median over rounds). Goal: netmangle\'s flat in file size.',
    '',
    table(['tool', 'capture', 'capture ×2', '×2 / ×1'], rssRows),
    '',
    `Checked before timing: ${checks.join('; ')}.`,
    '',
  ].join('\n');
  return { markdown: md, headlines };
}
