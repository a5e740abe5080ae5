/**
 * 6. Delay line: the user-space delay line's own overhead (issue 9), through `bin/netmangle run`
 * at egress of the sender's veth in a two-namespace lab, against the same traffic with no program:
 *
 * - added latency: ping RTT with `icmp.type == 8 => delay 0ms` (and `delay 1ms`);
 * - packets per second it holds and releases: a UDP stream of 64-byte datagrams at stepped
 *   offered rates through `udp => delay 0ms` (and `delay 1ms`), counted at the receiver's UDP layer.
 *
 * Every run checks the line's exit summary: what the rule sent to the line, what the line read,
 * what it could not hold (over-limit) and what it could not write back (failed).
 */
import { NetmangleError } from '../../src/errors.js';
import { startCli, type RunSummary } from '../lib/cli.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV, iperfClient, IPERF_PORT, RECEIVER, SENDER, startIperfServer, type BenchLab } from '../lib/lab.js';
import { int, ms, ratio, sig, table } from '../lib/report.js';
import { BENCH_SEED } from '../lib/rules.js';
import { interleave, max, median, medianRatio, min } from '../lib/stats.js';

type Variant = 'none' | 'd0' | 'd1';
const DELAY_OF: Record<Exclude<Variant, 'none'>, string> = { d0: '0ms', d1: '1ms' };
/** Bytes of UDP payload per datagram in the stream. */
const PAYLOAD = 64;
/** How long after the sender stops the receiver's counters are read: the line may still hold the stream's tail. */
const SETTLE_MS = 100;
/** A sender below this fraction of the offered rate is marked in the table. */
const SHORT_OF_OFFERED = 0.95;
/** Loss through the line below which an offered rate counts as held and released. */
const LOSS_GOAL = 0.01;

/** What one pass of traffic through the line left in its counters. */
interface LineTotals {
  /** Packets the rule's program sent to the line (its `acted` count). */
  acted: number;
  /** Packets the line read and held (`delayed`), or passed on at once because it was full (`over-limit`). */
  delayed: number;
  overLimit: number;
  failed: number;
  peakHeld: number;
  /** Packets still held when netmangle stopped (dropped with it). */
  heldAtExit: number;
}

const sum = (v: readonly number[]) => v.reduce((a, b) => a + b, 0);

const emptyTotals = (): LineTotals => ({ acted: 0, delayed: 0, overLimit: 0, failed: 0, peakHeld: 0, heldAtExit: 0 });

function addTotals(into: LineTotals, s: RunSummary): LineTotals {
  const rule = Object.values(s.rules)[0];
  const line = s.delayLines[`${DEV}/egress`];
  if (!rule || !line) throw new NetmangleError(`netmangle run printed no rule or delay line summary at exit: ${s.stdout.trim().split('\n').slice(-3).join(' / ')}`);
  into.acted += rule.acted;
  into.delayed += line['delayed'] ?? 0;
  into.overLimit += line['over-limit'] ?? 0;
  into.failed += line['failed'] ?? 0;
  into.peakHeld = Math.max(into.peakHeld, line['peak'] ?? 0);
  into.heldAtExit += line['held'] ?? 0;
  return into;
}

/** Packets the program redirected to the TAP that the line never read (dropped at the TAP's queue). */
const unread = (t: LineTotals) => t.acted - t.delayed - t.overLimit;

/** Runs `traffic` with `rule` attached through `netmangle run` at the sender's egress; adds the line's counters to `totals`. */
async function throughLine<T>(ctx: BenchContext, l: BenchLab, rule: string, totals: LineTotals, traffic: () => Promise<T>): Promise<T> {
  const cli = await startCli(ctx, [rule, '--dev', DEV, '--hook', 'egress', '--netns', l.senderNs, '--seed', String(BENCH_SEED)]);
  let result: T;
  try {
    result = await traffic();
  } finally {
    const summary = await cli.stop();
    addTotals(totals, summary);
  }
  return result;
}

/** Round-trip times (ms) of `count` pings from the sender to the receiver, `interval` seconds apart. */
async function pingRtts(l: BenchLab, count: number, interval: number): Promise<number[]> {
  const r = await l.lab.exec(SENDER, ['ping', '-n', '-c', String(count), '-i', String(interval), '-W', '1', l.receiverAddress], { timeoutMs: (count * interval + 10) * 1000 });
  const rtts = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  if (rtts.length < count * 0.99) throw new NetmangleError(`ping got ${rtts.length} of ${count} replies (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n').pop()}`);
  return rtts;
}

/**
 * UDP datagrams that reached the receiver's UDP layer: delivered to a socket, dropped for a full
 * socket buffer, or for no socket (a straggler the line released after iperf3 closed its test).
 */
async function udpArrivals(l: BenchLab): Promise<number> {
  const r = await l.lab.exec(RECEIVER, ['cat', '/proc/net/snmp'], { check: true });
  const lines = r.stdout.split('\n').filter((s) => s.startsWith('Udp: '));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const get = (n: string) => {
    const i = names.indexOf(n);
    if (i < 0) throw new NetmangleError(`no ${n} in the receiver's /proc/net/snmp`);
    return Number(values[i]);
  };
  return get('InDatagrams') + get('RcvbufErrors') + get('NoPorts');
}

interface StreamResult {
  /** Datagrams the sender sent, and those that reached the receiver. */
  sent: number;
  arrived: number;
}

async function udpStream(l: BenchLab, pps: number, seconds: number): Promise<StreamResult> {
  const before = await udpArrivals(l);
  const r = await iperfClient(l, { udp: true, seconds, length: PAYLOAD, bitrate: String(pps * PAYLOAD * 8), port: IPERF_PORT });
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  const arrived = (await udpArrivals(l)) - before;
  return { sent: r.packetsSent ?? Math.round((r.bitsPerSecond * seconds) / (PAYLOAD * 8)), arrived };
}

export async function measureDelay(ctx: BenchContext): Promise<SectionResult> {
  const pingRounds = ctx.quick ? 1 : 3;
  const pings = ctx.quick ? 50 : 100;
  const pingInterval = 0.01;
  const streamRounds = ctx.quick ? 1 : 2;
  const streamSeconds = 1;
  const rates = ctx.quick ? [50_000, 200_000] : [20_000, 50_000, 100_000, 150_000, 200_000];

  const l = await benchLab(ctx, 'delay');
  try {
    // ---- 1. added latency: ping RTT ----
    await pingRtts(l, 3, 0.01); // warm-up, untimed: ARP
    const pingTotals: Record<Exclude<Variant, 'none'>, LineTotals> = { d0: emptyTotals(), d1: emptyTotals() };
    const pingRun = (v: Variant) => async () => {
      const rtts = v === 'none'
        ? await pingRtts(l, pings, pingInterval)
        : await throughLine(ctx, l, `icmp.type == 8 => delay ${DELAY_OF[v]}`, pingTotals[v], () => pingRtts(l, pings, pingInterval));
      return median(rtts);
    };
    ctx.log(`delay: ${pingRounds} rounds of ${pings} pings (-i ${pingInterval}) with no program, delay 0ms, delay 1ms`);
    const rtt = await interleave(pingRounds, [['none', pingRun('none')], ['d0', pingRun('d0')], ['d1', pingRun('d1')]] as const);
    for (const v of ['d0', 'd1'] as const) {
      const t = pingTotals[v];
      const expected = pings * pingRounds;
      if (t.acted < expected || t.delayed + t.overLimit < t.acted || t.failed > 0) {
        throw new NetmangleError(
          `ping through delay ${DELAY_OF[v]}: the rule sent ${t.acted} echo requests to the line (expected ${expected}), it read ${t.delayed + t.overLimit}, failed to send ${t.failed}`,
        );
      }
    }
    const diffs = (v: 'd0' | 'd1') => rtt[v].map((x, i) => x - rtt.none[i]!);
    const added0 = median(diffs('d0'));
    const added1 = median(diffs('d1'));
    const range = (v: number[]) => (v.length > 1 ? `${ms(median(v))} (${ms(min(v))}–${ms(max(v))})` : ms(median(v)));
    const pingRows = [
      ['no program (anchor)', range(rtt.none), '', '', ''],
      ...(['d0', 'd1'] as const).map((v) => {
        const t = pingTotals[v];
        return [
          `\`icmp.type == 8 => delay ${DELAY_OF[v]}\``,
          range(rtt[v]),
          ms(median(diffs(v))),
          ratio(medianRatio(rtt[v], rtt.none)),
          `${int(t.acted)} / ${int(t.delayed)} / ${int(t.overLimit)} / ${int(t.failed)}`,
        ];
      }),
    ];

    // ---- 2. packets per second held and released: a UDP stream ----
    await startIperfServer(l);
    await udpStream(l, 1000, 1); // warm-up, untimed: the server's first accept
    interface Step {
      pps: number;
      sent: Record<Variant, number[]>;
      arrived: Record<Variant, number[]>;
      totals: Record<Exclude<Variant, 'none'>, LineTotals>;
    }
    const steps: Step[] = [];
    ctx.log(`delay: UDP stream of ${PAYLOAD}-byte datagrams at ${rates.map((r) => int(r)).join(', ')} pps, ${streamRounds} rounds of ${streamSeconds} s, no program, delay 0ms, delay 1ms`);
    for (const pps of rates) {
      const step: Step = { pps, sent: { none: [], d0: [], d1: [] }, arrived: { none: [], d0: [], d1: [] }, totals: { d0: emptyTotals(), d1: emptyTotals() } };
      const run = (v: Variant) => async () => {
        const r = v === 'none'
          ? await udpStream(l, pps, streamSeconds)
          : await throughLine(ctx, l, `udp => delay ${DELAY_OF[v]}`, step.totals[v], () => udpStream(l, pps, streamSeconds));
        step.sent[v].push(r.sent);
        step.arrived[v].push(r.arrived);
        return r.arrived / streamSeconds;
      };
      await interleave(streamRounds, [['none', run('none')], ['d0', run('d0')], ['d1', run('d1')]] as const);
      for (const v of ['d0', 'd1'] as const) {
        const t = step.totals[v];
        if (t.acted === 0 || t.delayed === 0) throw new NetmangleError(`UDP at ${pps} pps through delay ${DELAY_OF[v]}: the rule sent ${t.acted} datagrams to the line and it held ${t.delayed}`);
      }
      steps.push(step);
    }
    // iperf3's own setup datagram arrives too, so arrivals can exceed the stream by one: no negative loss.
    const lossOf = (s: Step, v: Variant) => median(s.arrived[v].map((a, i) => Math.max(0, 1 - a / s.sent[v][i]!)));
    // The fraction of what was sent that arrived: the sender alone does not always reach the offered rate on a busy machine.
    const delivered = (s: Step, v: Variant) => s.arrived[v].map((a, i) => a / s.sent[v][i]!);
    const bestRate = (v: Variant) => {
      let best = 0;
      for (const s of steps) if (lossOf(s, v) < LOSS_GOAL) best = Math.max(best, s.pps);
      return best;
    };
    const pct = (x: number) => `${(x * 100).toFixed(x < 0.1 ? 2 : 1)}%`;
    const streamRows = steps.flatMap((s) =>
      (['none', 'd0', 'd1'] as const).map((v) => {
        const t = v === 'none' ? undefined : s.totals[v];
        return [
          int(s.pps),
          v === 'none' ? 'no program (anchor)' : `\`udp => delay ${DELAY_OF[v]}\``,
          `${int(median(s.sent[v]) / streamSeconds)}${median(s.sent[v]) / streamSeconds < SHORT_OF_OFFERED * s.pps ? ' †' : ''}`,
          int(median(s.arrived[v]) / streamSeconds),
          pct(lossOf(s, v)),
          v === 'none' ? '1.00×' : ratio(medianRatio(delivered(s, v), delivered(s, 'none'))),
          t ? `${int(t.acted)} / ${int(t.delayed)} / ${int(unread(t))} / ${int(t.overLimit)} / ${int(t.failed)} / ${int(t.peakHeld)}` : '',
          t ? int(t.delayed + t.overLimit - t.failed - t.heldAtExit - sum(s.arrived[v])) : '',
        ];
      }),
    );
    const best0 = bestRate('d0');
    const best1 = bestRate('d1');
    const bestNone = bestRate('none');
    const top = steps[steps.length - 1]!;
    const bestText = (b: number) => (b > 0 ? `${int(b)} pps` : `none of the rates (lowest ${int(rates[0]!)} pps)`);

    const md = [
      '## 6. Delay line',
      '',
      'The user-space delay line\'s own overhead (docs/delay.md, "How it works": the rule\'s program redirects the chosen packets to a TAP device, ' +
        'netmangle reads them from the TAP, holds them in a heap by release time and writes them back into it, from where they go on). ' +
        `Each variant runs \`bin/netmangle run RULE --dev ${DEV} --hook egress --netns NS --seed ${BENCH_SEED}\` at egress of the sender's veth in a two-namespace lab, ` +
        'started fresh for each run (timed traffic begins after its "attached" line) and stopped with SIGINT; the anchor is the same traffic with no program. ' +
        'The line\'s counters come from the exit summary of each run: "to line" is the rule\'s `acted` count (packets redirected to the TAP), ' +
        '"held" the line\'s `delayed`, "unread" what the program redirected but the line never read (dropped at the TAP\'s queue when the line falls behind), ' +
        '"over-limit" what it read but could not hold (passed on at once), "failed" what it could not write back; "peak" the most packets held at once; ' +
        '"lost after the line" what it wrote back that never reached the receiver (held + over-limit − failed − still held at exit − arrived).',
      '',
      `### Added latency: ping RTT`,
      '',
      `\`ping -c ${pings} -i ${pingInterval}\` from the sender to the receiver, ${pingRounds} round${pingRounds === 1 ? '' : 's'} interleaved (no program, 0 ms, 1 ms, 1 ms, 0 ms, no program, …); ` +
        'the RTT column is the median of each run\'s median RTT (range over runs); "added" the median over rounds of (run median − the same round\'s anchor median).',
      '',
      table(['variant', 'median RTT', 'added', 'ratio to no program', 'to line / held / over-limit / failed'], pingRows, ['l', 'r', 'r', 'r', 'r']),
      '',
      `### Packets per second held and released: a UDP stream`,
      '',
      `\`iperf3 -u -l ${PAYLOAD} -b RATE -t ${streamSeconds}\` (${PAYLOAD}-byte datagrams at a fixed offered rate) from the sender to the receiver, ` +
        `${streamRounds} round${streamRounds === 1 ? '' : 's'} interleaved per rate; "sent/s" is what iperf3 sent, "arrived/s" the datagrams that reached the receiver's UDP layer ` +
        `(\`/proc/net/snmp\` Udp InDatagrams + RcvbufErrors + NoPorts in its namespace, read ${SETTLE_MS} ms after iperf3 ends, so neither a slow iperf3 server nor a tail the line releases after the test closed counts as loss), ` +
        '"loss" 1 − arrived ÷ sent (median over rounds), "ratio" the fraction delivered (arrived ÷ sent) with the rule ÷ the same with no program in the same round (median), ' +
        `a ratio of fractions because iperf3 itself does not always reach the offered rate on a busy machine († marks a median below ${SHORT_OF_OFFERED * 100}% of it). Counters are totals over the rounds.`,
      '',
      table(['offered pps', 'variant', 'sent/s', 'arrived/s', 'loss', 'ratio to no program', 'to line / held / unread / over-limit / failed / peak', 'lost after the line'], streamRows, ['r', 'l', 'r', 'r', 'r', 'r', 'r', 'r']),
      '',
      `Highest offered rate delivered with < ${LOSS_GOAL * 100}% loss: through \`delay 0ms\` ${bestText(best0)}, through \`delay 1ms\` ${bestText(best1)}, with no program ${bestText(bestNone)} ` +
        `(of ${rates.map((r) => int(r)).join(', ')} pps).`,
      '',
    ].join('\n');
    return {
      markdown: md,
      headlines: [
        `delay line, added ping RTT: delay 0ms +${sig(added0, 2)} ms (${ms(median(rtt.d0))} vs ${ms(median(rtt.none))} with no program), delay 1ms +${sig(added1, 3)} ms`,
        `delay line, UDP ${PAYLOAD}-byte datagrams: highest offered rate with < ${LOSS_GOAL * 100}% loss ${bestText(best0)} (delay 0ms), ${bestText(best1)} (delay 1ms); ` +
          `at ${int(top.pps)} pps delivered fraction / no program = ${ratio(medianRatio(delivered(top, 'd0'), delivered(top, 'none')))} (0ms), ${ratio(medianRatio(delivered(top, 'd1'), delivered(top, 'none')))} (1ms)`,
      ],
    };
  } finally {
    await l.down();
  }
}
