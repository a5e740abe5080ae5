/**
 * 5. Live: iperf3 TCP throughput across the lab's veth with no program, with netmangle's PSH
 * rule, and with the clang-built PSH anchor, interleaved.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { NetmangleError } from '../../src/errors.js';
import { attachGroups } from '../../src/live/index.js';
import { ANCHOR_DIR, buildObject } from '../lib/anchors.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV, iperfClient, startIperfServer, type BenchLab } from '../lib/lab.js';
import { int, ratio, sig, table, verdict } from '../lib/report.js';
import { BENCH_SEED, pshRule, ruleGroup } from '../lib/rules.js';
import { interleave, max, median, medianRatio, min, spread } from '../lib/stats.js';

function tc(argv: string[], what: string): void {
  const r = spawnSync('tc', argv, { encoding: 'utf8' });
  if (r.status !== 0) throw new NetmangleError(`${what}: \`tc ${argv.join(' ')}\` failed: ${(r.stderr || '').trim().split('\n').pop()}`);
}

export async function measureLive(ctx: BenchContext): Promise<SectionResult> {
  const rounds = ctx.quick ? 2 : 5;
  const seconds = ctx.quick ? 1 : 3;
  const object = join(ctx.tmp, 'live_psh.o');
  buildObject(join(ANCHOR_DIR, 'tc_psh_egress.c'), object);
  const l: BenchLab = await benchLab(ctx, 'live');
  try {
    await startIperfServer(l);
    const ns = l.senderNs;
    tc(['-n', ns, 'qdisc', 'add', 'dev', DEV, 'clsact'], 'add clsact');
    const group = ruleGroup([pshRule], DEV, ns);
    let acted = 0;
    let matched = 0;
    const retransmits: Record<string, number[]> = { none: [], nm: [], c: [] };
    const run = async (key: string) => {
      const r = await iperfClient(l, { seconds });
      retransmits[key]!.push(r.retransmits);
      return r.bitsPerSecond / 1e9;
    };
    await run('none'); // warm-up, untimed: ARP, the server's first accept
    retransmits.none = [];
    ctx.log(`live: ${rounds} rounds of ${seconds} s iperf3 with no program, netmangle's PSH rule, the clang PSH program`);
    const m = await interleave(rounds, [
      ['none', () => run('none')],
      ['nm', async () => {
        const session = attachGroups([group], { seed: BENCH_SEED });
        try {
          return await run('nm');
        } finally {
          const c = session.counters()[0]!.rules[0]!;
          acted += c.acted;
          matched += c.matched;
          session.detach();
        }
      }],
      ['c', async () => {
        tc(['-n', ns, 'filter', 'add', 'dev', DEV, 'egress', 'bpf', 'da', 'obj', object, 'sec', 'tc'], 'attach the clang PSH program');
        try {
          return await run('c');
        } finally {
          tc(['-n', ns, 'filter', 'del', 'dev', DEV, 'egress'], 'remove the clang PSH program');
        }
      }],
    ] as const);
    if (acted === 0) throw new NetmangleError(`netmangle's PSH rule matched ${matched} packets but acted on none during the live runs`);
    const noise = spread(m.none);
    const nmRatio = medianRatio(m.nm, m.none);
    const cRatio = medianRatio(m.c, m.none);
    const range = (v: number[]) => `${sig(median(v), 3)} (${sig(min(v), 3)}–${sig(max(v), 3)})`;
    const within = (r: number) => Math.abs(1 - r) <= noise;
    const rows = [
      ['no program', range(m.none), '1.00×', '', int(median(retransmits.none!))],
      ['netmangle PSH rule (tcx link)', range(m.nm), ratio(nmRatio), verdict(within(nmRatio)), int(median(retransmits.nm!))],
      ['clang PSH program (`tc filter add … bpf da`)', range(m.c), ratio(cRatio), verdict(within(cRatio)), int(median(retransmits.c!))],
    ];
    const md = [
      '## 5. Live throughput',
      '',
      `\`iperf3 -c … -t ${seconds}\` (one TCP flow) from the sender to the receiver of a two-namespace lab across one veth pair, ` +
        `${rounds} rounds interleaved (no program, netmangle, clang, clang, netmangle, no program, …), medians (range) of the receiver's throughput. ` +
        `netmangle: the PSH rule (\`${pshRule.text}\`, probability ${pshRule.probability}) attached with \`attachGroups\` at egress of the sender's veth (a tcx link) for each run; ` +
        'clang: tc_psh_egress.c built with clang -O2 and attached with `tc filter add dev eth0 egress bpf da obj … sec tc` for each run. ' +
        `Over its runs netmangle's rule matched ${int(matched)} packets at the hook (GSO super-packets: locally sent TCP reaches tc egress unsegmented) and set PSH on ${int(acted)}.`,
      '',
      table(['variant', 'Gbit/s', 'ratio to no program', `within noise (±${(noise * 100).toFixed(1)}%)`, 'retransmits (median)'], rows, ['l', 'r', 'r', 'l', 'r']),
      '',
      `"Noise" is the spread of the no-program runs, (max − min) ÷ median = ${(noise * 100).toFixed(1)}%. Goal: netmangle within noise of no program.`,
      '',
    ].join('\n');
    return {
      markdown: md,
      headlines: [
        `live iperf3 throughput: netmangle PSH rule / no program = ${ratio(nmRatio)}, clang PSH program / no program = ${ratio(cRatio)} (noise ±${(noise * 100).toFixed(1)}%)`,
      ],
    };
  } finally {
    await l.down();
  }
}
