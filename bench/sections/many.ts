/**
 * 2. Many rules: N rules in one netmangle program against N clang-built programs attached one
 * after another on the same tcx hook, measured live while iperf3 sends TCP across the lab.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { attachProgram, type Attachment } from '../../src/kernel/attach.js';
import { enableStats, programInfo, testRun, type Program } from '../../src/kernel/index.js';
import { loadCompiled, type LoadedProgram } from '../../src/live/index.js';
import { describeError } from '../../src/errors.js';
import { buildObject, EMPTY_TC_SOURCE, loadObject, loadSingle, portChainSource } from '../lib/anchors.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV, iperfClient, startIperfServer, type BenchLab } from '../lib/lab.js';
import { tcpFrame } from '../lib/packets.js';
import { int, ns, ratio, table } from '../lib/report.js';
import { compileRules, portRules, rulePorts } from '../lib/rules.js';
import { interleave, median, medianRatio } from '../lib/stats.js';

const COUNTS = [1, 10, 50, 100];

/** bpf_mprog's limit: a tcx hook holds at most 64 programs (more fail with ERANGE). */
const TCX_MAX_PROGRAMS = 64;

interface Sample {
  /** Sum over the attached programs of run_time_ns, per packet (run_cnt of the first program). */
  nsPerPacket: number;
  packets: number;
}

/**
 * Attaches `programs` in order at egress of the sender's eth0 (tcx links, or cls_bpf filters
 * of increasing priority for a chain longer than tcx allows), sends TCP for `seconds`, and
 * reads how long the programs ran (run-time statistics are on for the whole section).
 */
async function measureLive(l: BenchLab, programs: readonly Program[], seconds: number): Promise<Sample> {
  const attached: Attachment[] = [];
  const path = chainPath(programs.length);
  try {
    for (const [i, p] of programs.entries()) {
      attached.push(attachProgram(p, { dev: DEV, hook: 'egress', netns: l.senderNs, path, tcPriority: i + 1, tcHandle: 1 }));
    }
    const before = programs.map((p) => programInfo(p));
    await iperfClient(l, { seconds });
    const after = programs.map((p) => programInfo(p));
    const packets = Number(after[0]!.runCount - before[0]!.runCount);
    let time = 0n;
    for (let i = 0; i < programs.length; i++) {
      time += after[i]!.runTimeNs - before[i]!.runTimeNs;
      const runs = Number(after[i]!.runCount - before[i]!.runCount);
      if (runs !== packets) throw new Error(`program ${i + 1} of ${programs.length} ran ${runs} times, the first ${packets}: not a chain`);
    }
    if (packets === 0) throw new Error('no packet went through the programs');
    return { nsPerPacket: Number(time) / packets, packets };
  } finally {
    for (const a of attached.reverse()) a.detach();
  }
}

function chainPath(count: number): 'tcx' | 'netlink' {
  return count <= TCX_MAX_PROGRAMS ? 'tcx' : 'netlink';
}

function pathName(count: number): string {
  return chainPath(count) === 'tcx' ? 'tcx links' : 'cls_bpf filters';
}

export async function measureManyRules(ctx: BenchContext): Promise<SectionResult> {
  const rounds = ctx.quick ? 1 : 3;
  const seconds = ctx.quick ? 1 : 2;
  const repeat = ctx.quick ? 100_000 : 1_000_000;
  const ports = rulePorts(Math.max(...COUNTS));

  const source = join(ctx.tmp, 'port_chain.c');
  writeFileSync(source, portChainSource(ports));
  const object = join(ctx.tmp, 'port_chain.o');
  buildObject(source, object);
  const emptySource = join(ctx.tmp, 'empty_tc.c');
  writeFileSync(emptySource, EMPTY_TC_SOURCE);
  buildObject(emptySource, join(ctx.tmp, 'empty_tc.o'));

  const chain = loadObject(object, 'tc');
  const empty = loadSingle(join(ctx.tmp, 'empty_tc.o'), 'tc');
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
    // BPF_PROG_TEST_RUN of netmangle's programs before statistics are turned on (they would add their clock reads).
    const offline = new Map<number, number>();
    for (const [n, p] of nm) {
      testRun(p.prog, { data: tcpFrame(), repeat: Math.min(repeat, 100_000) });
      offline.set(n, testRun(p.prog, { data: tcpFrame(), repeat }).durationNs);
    }
    stats = enableStats();
    const chainProgs = [...chain.programs.values()];
    l = await benchLab(ctx, 'many');
    await startIperfServer(l);

    ctx.log(`many rules: empty program, ${rounds} rounds of ${seconds} s`);
    const floor = median((await interleave(rounds, [['empty', async () => (await measureLive(l!, [empty.prog], seconds)).nsPerPacket]] as const)).empty);

    const rows: string[][] = [];
    const headlines: string[] = [];
    const perCount: Array<{ n: number; nm: number; chain: number }> = [];
    for (const n of COUNTS) {
      ctx.log(`many rules: ${n} rule(s), ${rounds} rounds of ${seconds} s each`);
      const packets: number[] = [];
      const program = nm.get(n);
      const chainOnly = async () => { const s = await measureLive(l!, chainProgs.slice(0, n), seconds); packets.push(s.packets); return s.nsPerPacket; };
      if (!program) {
        const m = await interleave(rounds, [['chain', chainOnly]] as const);
        const chainMed = median(m.chain);
        rows.push([String(n), 'not loaded (see below)', ns(chainMed), pathName(n), 'n/a', 'n/a', ns(chainMed - n * floor), 'n/a', 'n/a', 'n/a', int(median(packets))]);
        headlines.push(`${n} rules: netmangle's single program was not loaded (${loadErrors.get(n)}); the chain of ${n} clang programs costs ${ns(chainMed)} ns per packet`);
        continue;
      }
      const m = await interleave(rounds, [
        ['nm', async () => { const s = await measureLive(l!, [program.prog], seconds); packets.push(s.packets); return s.nsPerPacket; }],
        ['chain', chainOnly],
      ] as const);
      const nmMed = median(m.nm);
      const chainMed = median(m.chain);
      const r = medianRatio(m.nm, m.chain);
      const nmNet = nmMed - floor;
      const chainNet = chainMed - n * floor;
      const net = nmNet / chainNet;
      perCount.push({ n, nm: nmNet, chain: chainNet });
      rows.push([
        String(n), ns(nmMed), ns(chainMed), pathName(n), ratio(r),
        ns(nmNet), ns(chainNet), ratio(net),
        ns(offline.get(n)!), int(verified.get(n) ?? Number.NaN), int(median(packets)),
      ]);
      headlines.push(`${n} rule${n === 1 ? '' : 's'}: one netmangle program / chain of ${n} clang programs = ${ratio(net)} per packet net of the statistics floor (${ratio(r)} as measured)`);
    }
    const first = perCount[0];
    const last = perCount[perCount.length - 1];
    let growth = 'No two counts were measured for both, so there is no growth to compare.';
    if (first && last && last !== first) {
      const growthNm = last.nm - first.nm;
      const growthChain = last.chain - first.chain;
      growth = `Growth from ${first.n} to ${last.n} rules (the largest count measured for both), net of the statistics floor: netmangle +${ns(growthNm)} ns per packet, the chain +${ns(growthChain)} ns (${ratio(growthNm / growthChain)}).`;
      headlines.push(`from ${first.n} to ${last.n} rules, net of the statistics floor: netmangle +${ns(growthNm)} ns per packet, the chain +${ns(growthChain)} ns (${ratio(growthNm / growthChain)}; goal: far below 1)`);
    }
    const notLoaded = [...loadErrors.keys()];

    const md = [
      '## 2. Many rules: one program against a chain of programs',
      '',
      `N rules \`tcp.dstport == PORT => set tcp.flags.push = 1\` (probability 0.1, ports ${ports[0]}–${ports[0]! + COUNTS[COUNTS.length - 1]! - 1}) ` +
        'compiled into one netmangle program, against N clang-built programs, one per port, written like the PSH anchor ' +
        '(bench/lib/anchors.ts generates them; each returns TC_ACT_UNSPEC so the next one runs) and attached one after another ' +
        `with tcx links on the same hook; a tcx hook holds at most ${TCX_MAX_PROGRAMS} programs (the kernel answers ERANGE to the next), ` +
        'so a longer chain is attached the way `tc filter add … bpf da` stacks programs: cls_bpf filters of increasing priority on clsact ' +
        '(TC_ACT_UNSPEC passes the packet to the next filter). netmangle\'s program is always on a tcx link. Each variant is attached in turn at tcx egress of the sender\'s veth in a two-namespace lab ' +
        `while \`iperf3 -c … -t ${seconds}\` sends TCP to port 5201, which no rule names: every packet is checked against every rule and matches none. ` +
        `${rounds} round${rounds === 1 ? '' : 's'} interleaved (netmangle, chain, chain, netmangle, …), medians.`,
      '',
      'BPF_PROG_TEST_RUN runs one program, so the chain is measured live: with run-time statistics on (BPF_ENABLE_STATS), ' +
        'the kernel adds every program\'s run time to its run_time_ns; ns per packet = the sum over the attached programs of the ' +
        'growth of run_time_ns ÷ the growth of the first program\'s run_cnt (the bench checks every program ran as often). ' +
        `The statistics themselves cost two clock reads per program run, counted once per program: an empty program measures ${ns(floor)} ns per packet here. ` +
        'The "net" columns subtract that floor once for netmangle\'s program and N times for the chain; the dispatch from one ' +
        'tcx program to the next is outside every program\'s run time and in neither figure.',
      '',
      table(
        ['rules', 'netmangle ns/packet', 'chain ns/packet', 'chain attached as', 'ratio', 'netmangle net', 'chain net', 'net ratio', 'netmangle test-run ns', 'netmangle insns verified', 'packets per run'],
        rows, ['r', 'r', 'r', 'l'],
      ),
      '',
      `${growth} Goal: netmangle grows far slower than the chain. ` +
        `"netmangle test-run ns": the same program through BPF_PROG_TEST_RUN (${int(repeat)} runs on a 54-byte ACK to port 5201), without statistics. ` +
        '"insns verified": instructions the verifier processed to accept it (the kernel refuses a program past 1 000 000).',
      '',
      notLoaded.length
        ? `netmangle could not load its program for ${notLoaded.join(' and ')} rules: ${loadErrors.get(notLoaded[0]!)}. ` +
          'The kernel\'s verifier gives up (E2BIG) once it has processed 1 000 000 instructions; the counts above show how many it processes per rule.\n'
        : '',
    ].join('\n');
    return { markdown: md, headlines };
  } finally {
    await l?.down();
    stats?.close();
    for (const p of nm.values()) p.close();
    await empty.close();
    await chain.close();
  }
}
