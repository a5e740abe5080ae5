/**
 * 2. Many rules: N rules in one netmangle program against N clang-built programs attached one
 * after another on the same hook. Measured two ways: offline with BPF_PROG_TEST_RUN (each
 * program alone, no statistics; the chain's figure is the sum over its programs), and live
 * with run-time statistics while iperf3 sends TCP across the lab.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeError } from '../../src/errors.js';
import { attachProgram, type Attachment } from '../../src/kernel/attach.js';
import { enableStats, programInfo, testRun, type Program } from '../../src/kernel/index.js';
import { loadCompiled, type LoadedProgram } from '../../src/live/index.js';
import { buildObject, emptyChainSource, loadObject, portChainSource } from '../lib/anchors.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV, iperfClient, startIperfServer, type BenchLab } from '../lib/lab.js';
import { tcpFrame } from '../lib/packets.js';
import { int, ns, ratio, table } from '../lib/report.js';
import { compileRules, portRules, rulePorts } from '../lib/rules.js';
import { interleave, median, medianRatio } from '../lib/stats.js';

const COUNTS = [1, 10, 50, 100];

/** bpf_mprog's limit: a tcx hook holds at most 64 programs (more fail with ERANGE). */
const TCX_MAX_PROGRAMS = 64;

function chainPath(count: number): 'tcx' | 'netlink' {
  return count <= TCX_MAX_PROGRAMS ? 'tcx' : 'netlink';
}

function pathName(count: number): string {
  return chainPath(count) === 'tcx' ? 'tcx links' : 'cls_bpf filters';
}

/**
 * Attaches `programs` in order at egress of the sender's eth0 (tcx links, or cls_bpf filters
 * of increasing priority for a chain longer than tcx allows), sends TCP for `seconds`, and
 * returns the programs' summed run_time_ns per packet (run-time statistics must be on).
 */
async function liveNsPerPacket(l: BenchLab, programs: readonly Program[], seconds: number): Promise<number> {
  const attached: Attachment[] = [];
  const path = chainPath(programs.length);
  try {
    for (const [i, p] of programs.entries()) {
      attached.push(attachProgram(p, { dev: DEV, hook: 'egress', netns: l.senderNs, path, tcPriority: i + 1, tcHandle: 1 }));
    }
    const before = programs.map((p) => programInfo(p));
    await iperfClient(l, { seconds });
    // Let the last segments of the connection's close pass the hook before reading.
    await new Promise((r) => setTimeout(r, 200));
    const after = programs.map((p) => programInfo(p));
    // Each program's mean run time, summed over the chain. The counters are read one program
    // after another, so a stray packet (neighbour discovery) may be counted by some and not yet
    // by others; counts must agree to within 0.1 %.
    const first = Number(after[0]!.runCount - before[0]!.runCount);
    if (first === 0) throw new Error('no packet went through the programs');
    let total = 0;
    for (let i = 0; i < programs.length; i++) {
      const runs = Number(after[i]!.runCount - before[i]!.runCount);
      if (Math.abs(runs - first) > Math.max(2, first * 0.001)) {
        throw new Error(`program ${i + 1} of ${programs.length} ran ${runs} times, the first ${first}: not a chain`);
      }
      total += Number(after[i]!.runTimeNs - before[i]!.runTimeNs) / runs;
    }
    return total;
  } finally {
    for (const a of attached.reverse()) a.detach();
  }
}

/** The kernel's whole-ns mean per run of one program on `frame`, after a warm-up. */
function testRunNs(prog: Program, frame: Uint8Array, repeat: number): number {
  testRun(prog, { data: frame, repeat: Math.min(repeat, 10_000) });
  return testRun(prog, { data: frame, repeat }).durationNs;
}

export async function measureManyRules(ctx: BenchContext): Promise<SectionResult> {
  const rounds = ctx.quick ? 1 : 3;
  const seconds = ctx.quick ? 1 : 2;
  const repeat = ctx.quick ? 100_000 : 1_000_000;
  const offlineRounds = ctx.quick ? 1 : 3;
  const largest = Math.max(...COUNTS);
  const ports = rulePorts(largest);
  const frame = tcpFrame(); // an ACK to port 5201: no rule matches it

  const build = (name: string, source: string): string => {
    writeFileSync(join(ctx.tmp, `${name}.c`), source);
    buildObject(join(ctx.tmp, `${name}.c`), join(ctx.tmp, `${name}.o`));
    return join(ctx.tmp, `${name}.o`);
  };
  const chain = loadObject(build('port_chain', portChainSource(ports)), 'tc');
  const empties = loadObject(build('empty_chain', emptyChainSource(largest)), 'tc');
  const nm = new Map<number, LoadedProgram>();
  let stats: { close(): void } | undefined;
  let l: BenchLab | undefined;
  try {
    // A count netmangle cannot load is reported as such, and the chain is still measured.
    const loadErrors = new Map<number, string>();
    const verified = new Map<number, number>();
    for (const n of COUNTS) {
      try {
        const loaded = loadCompiled(compileRules(portRules(ports.slice(0, n))));
        nm.set(n, loaded);
        verified.set(n, programInfo(loaded.prog).verifiedInsns);
      } catch (err) {
        loadErrors.set(n, describeError(err).split('\n')[0]!);
        ctx.log(`many rules: netmangle's program for ${n} rules did not load: ${loadErrors.get(n)}`);
      }
    }
    const chainProgs = [...chain.programs.values()];
    const emptyProgs = [...empties.programs.values()];

    // Offline, before statistics are on: each program alone through BPF_PROG_TEST_RUN.
    ctx.log(`many rules: BPF_PROG_TEST_RUN of every program, ${offlineRounds} round(s) of ${repeat} runs`);
    const perProgram = chainProgs.map(() => [] as number[]);
    const nmOffline = new Map<number, number[]>([...nm.keys()].map((n) => [n, []]));
    const emptyOfflineRuns: number[] = [];
    for (let r = 0; r < offlineRounds; r++) {
      emptyOfflineRuns.push(testRunNs(emptyProgs[0]!, frame, repeat));
      for (const [n, p] of nm) nmOffline.get(n)!.push(testRunNs(p.prog, frame, repeat));
      chainProgs.forEach((p, i) => perProgram[i]!.push(testRunNs(p, frame, repeat)));
    }
    const chainProgramNs = perProgram.map(median);
    const chainOffline = (n: number) => chainProgramNs.slice(0, n).reduce((a, b) => a + b, 0);
    // What a test run costs around an empty program: the harness, counted once per program run.
    const emptyOffline = median(emptyOfflineRuns);

    stats = enableStats();
    l = await benchLab(ctx, 'many');
    await startIperfServer(l);

    const offlineRows: string[][] = [];
    const liveRows: string[][] = [];
    const headlines: string[] = [];
    const measured: Array<{ n: number; nmOff: number; chainOff: number; nmNet: number; chainNet: number }> = [];
    for (const n of COUNTS) {
      const program = nm.get(n);
      ctx.log(`many rules: ${n} rule(s) live, ${rounds} round(s) of ${seconds} s per variant`);
      const variants: Array<readonly ['nm' | 'chain' | 'empties' | 'empty', () => Promise<number>]> = [
        ['chain', () => liveNsPerPacket(l!, chainProgs.slice(0, n), seconds)],
        ['empties', () => liveNsPerPacket(l!, emptyProgs.slice(0, n), seconds)],
      ];
      if (program) {
        variants.unshift(['nm', () => liveNsPerPacket(l!, [program.prog], seconds)]);
        if (n > 1) variants.push(['empty', () => liveNsPerPacket(l!, emptyProgs.slice(0, 1), seconds)]);
      }
      const m = await interleave(rounds, variants) as Record<'nm' | 'chain' | 'empties' | 'empty', number[]>;
      const emptyOne = n > 1 ? m.empty : m.empties;
      const chainNet = m.chain.map((x, i) => x - m.empties[i]!);
      const chainOff = chainOffline(n) - n * emptyOffline;
      if (!program) {
        offlineRows.push([String(n), 'not loaded (see below)', ns(chainOffline(n)), 'n/a', 'n/a', ns(chainOff), 'n/a', 'n/a']);
        liveRows.push([String(n), 'not loaded', ns(median(m.chain)), 'n/a', 'n/a', ns(median(chainNet)), 'n/a', pathName(n)]);
        headlines.push(`${n} rules: netmangle's single program was not loaded (${loadErrors.get(n)}); a chain of ${n} clang programs: ${ns(chainOff)} ns per packet offline, ${ns(median(chainNet))} ns live (both net)`);
        continue;
      }
      const nmOffRaw = median(nmOffline.get(n)!);
      const nmOff = nmOffRaw - emptyOffline;
      const nmNet = m.nm!.map((x, i) => x - emptyOne![i]!);
      measured.push({ n, nmOff, chainOff, nmNet: median(nmNet), chainNet: median(chainNet) });
      offlineRows.push([
        String(n), ns(nmOffRaw), ns(chainOffline(n)), ratio(nmOffRaw / chainOffline(n)),
        ns(nmOff), ns(chainOff), ratio(nmOff / chainOff), int(verified.get(n) ?? Number.NaN),
      ]);
      liveRows.push([
        String(n), ns(median(m.nm!)), ns(median(m.chain)), ratio(medianRatio(m.nm!, m.chain)),
        ns(median(nmNet)), ns(median(chainNet)), ratio(medianRatio(nmNet, chainNet)), pathName(n),
      ]);
      headlines.push(
        `${n} rule${n === 1 ? '' : 's'}: one netmangle program / chain of ${n} clang program${n === 1 ? '' : 's'} = ${ratio(nmOff / chainOff)} per packet offline, ` +
          `${ratio(medianRatio(nmNet, chainNet))} live (both net of an empty program's cost per program run)`,
      );
    }
    let growth = 'Fewer than two counts were measured for both, so there is no growth to compare.';
    const first = measured[0];
    const last = measured[measured.length - 1];
    if (first && last && last !== first) {
      const gOff = [last.nmOff - first.nmOff, last.chainOff - first.chainOff];
      const gLive = [last.nmNet - first.nmNet, last.chainNet - first.chainNet];
      growth = `From ${first.n} to ${last.n} rules (the largest count netmangle loaded), net: offline netmangle +${ns(gOff[0]!)} ns per packet, the chain +${ns(gOff[1]!)} ns (${ratio(gOff[0]! / gOff[1]!)}); ` +
        `live (net) netmangle +${ns(gLive[0]!)} ns, the chain +${ns(gLive[1]!)} ns (${ratio(gLive[0]! / gLive[1]!)}).`;
      headlines.push(`growth from ${first.n} to ${last.n} rules, netmangle ÷ chain: ${ratio(gOff[0]! / gOff[1]!)} offline, ${ratio(gLive[0]! / gLive[1]!)} live (goal: far below 1)`);
    }
    const notLoaded = [...loadErrors.keys()];
    const md = [
      '## 2. Many rules: one program against a chain of programs',
      '',
      `N rules \`tcp.dstport == PORT => set tcp.flags.push = 1\` (probability 0.1, ports ${ports[0]}–${ports[0]! + largest - 1}) ` +
        'compiled into one netmangle program, against N clang-built programs, one per port, written like the PSH anchor ' +
        '(bench/lib/anchors.ts generates them; each returns TC_ACT_UNSPEC so that the next one runs). Traffic goes to port 5201, ' +
        'which no rule names: every packet is checked against every rule and matches none.',
      '',
      `**Offline**: BPF_PROG_TEST_RUN of each program alone (${int(repeat)} runs on a 54-byte ACK to port 5201, median of ${offlineRounds}, statistics off). ` +
        'The chain\'s figure is the sum over its N programs; the kernel reports each in whole ns, rounded down, so the true sum lies between it and N ns more, ' +
        'and it leaves out the hand-over from one program to the next. A test run costs something around any program: an empty program measures ' +
        `${ns(emptyOffline)} ns here, so the "net" columns subtract that once for netmangle's program and N times for the chain.`,
      '',
      table(['rules', 'netmangle ns/packet', 'chain ns/packet (sum)', 'ratio', 'netmangle net', 'chain net', 'net ratio', 'netmangle insns verified'], offlineRows),
      '',
      `**Live**: each variant attached in turn at egress of the sender's veth in a two-namespace lab while \`iperf3 -c … -t ${seconds}\` sends TCP ` +
        `(${rounds} round${rounds === 1 ? '' : 's'} interleaved, medians). netmangle's program is on a tcx link; the chain on tcx links, ` +
        `except that a tcx hook holds at most ${TCX_MAX_PROGRAMS} programs (the kernel answers ERANGE to the next), so a longer chain is stacked the way ` +
        '`tc filter add … bpf da` stacks programs: cls_bpf filters of increasing priority on clsact. With run-time statistics on (BPF_ENABLE_STATS) ' +
        'ns per packet = the sum over the attached programs of each one\'s growth of run_time_ns ÷ its growth of run_cnt (the bench checks they ran as often, to 0.1 %). ' +
        'The statistics add two clock reads to every program run, so the same number of empty programs, chained the same way and measured in the same rounds, ' +
        'is subtracted for the "net" columns (one empty program for netmangle\'s).',
      '',
      table(['rules', 'netmangle ns/packet', 'chain ns/packet', 'ratio', 'netmangle net', 'chain net', 'net ratio', 'chain attached as'], liveRows, ['r', 'r', 'r', 'r', 'r', 'r', 'r', 'l']),
      '',
      `${growth} Goal: netmangle grows far slower than the chain.`,
      '',
      notLoaded.length
        ? `netmangle could not load its program for ${notLoaded.join(' and ')} rules: ${loadErrors.get(notLoaded[0]!)}. ` +
          'The verifier gives up (E2BIG) after processing 1 000 000 instructions, and the "insns verified" column shows it processes ' +
          `about ${int((verified.get(measured[measured.length - 1]?.n ?? 1) ?? 0) / (measured[measured.length - 1]?.n ?? 1))} per rule of netmangle's program.\n`
        : '',
    ].join('\n');
    return { markdown: md, headlines };
  } finally {
    await l?.down();
    stats?.close();
    for (const p of nm.values()) p.close();
    await empties.close();
    await chain.close();
  }
}
