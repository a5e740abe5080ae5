/**
 * Cost per packet of compiled rules, in the kernel: BPF_PROG_TEST_RUN with a repeat count,
 * netmangle's program and the clang-built anchor (/work/shared/anchors) on the same frame,
 * interleaved round by round so that a noisy machine shifts both alike. Prints ns/run.
 *
 *   npx tsc -p . && node dist/bench/compiler-cost.js [--repeat N] [--rounds R] [--no-anchors]
 *
 * Needs root. A repeat runs the program again and again on one buffer: what a run writes the
 * next one sees (the PSH rule's ACK carries PSH after its first act), so the "ACK, draw never
 * acts" case runs the same rule with a probability that never acts, to time the whole
 * matching path (parse, match, counters, draw) on every run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileGroup } from '../src/compiler/index.js';
import { testRun, type Program } from '../src/kernel/index.js';
import { loadCompiled } from '../src/live/index.js';
import type { Hook, Rule } from '../src/rules/ast.js';
import { lookupField } from '../src/rules/catalog.js';
import { checkRule } from '../src/rules/check.js';
import { parseRuleText } from '../src/rules/parser.js';
import { buildPacket } from '../test/helpers/packets.js';
import { ANCHOR_DIR, buildObject, loadSingle } from './lib/anchors.js';

const TTL = 'icmp.type == 0 => set ip.ttl = random(1, ip.ttl)';
const PSH = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const REPEAT = Number(arg('--repeat') ?? 10_000_000);
const ROUNDS = Number(arg('--rounds') ?? 5);
const ANCHORS = !process.argv.includes('--no-anchors');

/** The 54-byte TCP ACK the anchors were measured on, and the other frames. */
const FRAMES = {
  'TCP ACK 54 B': buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x010 } }).frame,
  'TCP PSH+ACK 54 B': buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x018 } }).frame,
  'UDP 60 B': buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'udp', payload: new Uint8Array(18) } }).frame,
  'ICMP echo reply 98 B': buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'icmp', type: 0, payload: new Uint8Array(56) } }).frame,
  'ICMP echo request 98 B': buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'icmp', type: 8, payload: new Uint8Array(56) } }).frame,
  'IPv6 TCP ACK 74 B': buildPacket({ l3: { kind: 'ipv6' }, l4: { kind: 'tcp', flags: 0x010 } }).frame,
};
type FrameName = keyof typeof FRAMES;

interface Case {
  frame: FrameName;
  note: string;
  /** Override the rule's probability for this case. */
  probability?: number;
}

interface Pair {
  title: string;
  text: string;
  hook: Hook;
  probability?: number;
  anchor: string;
  type: 'xdp' | 'tc';
  cases: Case[];
}

const PAIRS: Pair[] = [
  {
    title: 'TTL rule, xdp', text: TTL, hook: 'xdp', anchor: 'xdp_ttl_pong.c', type: 'xdp',
    cases: [
      { frame: 'TCP ACK 54 B', note: 'no match (the anchors\' reference figure)' },
      { frame: 'ICMP echo request 98 B', note: 'no match' },
      { frame: 'ICMP echo reply 98 B', note: 'match, TTL rewritten every run' },
      { frame: 'IPv6 TCP ACK 74 B', note: 'no match' },
    ],
  },
  {
    title: 'PSH rule, tc egress, probability 0.1', text: PSH, hook: 'egress', probability: 0.1, anchor: 'tc_psh_egress.c', type: 'tc',
    cases: [
      { frame: 'TCP ACK 54 B', note: 'match, then PSH set (the anchors\' reference figure)' },
      { frame: 'TCP ACK 54 B', note: 'match, draw never acts', probability: 1e-12 },
      { frame: 'TCP PSH+ACK 54 B', note: 'no match' },
      { frame: 'UDP 60 B', note: 'no match' },
      { frame: 'IPv6 TCP ACK 74 B', note: 'match (anchor: no match)', probability: 1e-12 },
    ],
  },
];

function compile(text: string, hook: Hook, probability: number | undefined) {
  const checked = checkRule(parseRuleText(text), text, hook);
  const rule: Rule = { name: 'bench', text, ...checked, checksum: 'fix' };
  if (probability !== undefined) rule.probability = probability;
  return compileGroup({ dev: 'bench', hook, rules: [rule] }, { seed: 12345, lookupField });
}

const nsPerRun = (prog: Program, frame: Uint8Array): number => testRun(prog, { data: frame, repeat: REPEAT }).durationNs;

function summary(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  return `${String(s[Math.floor(s.length / 2)]).padStart(3)} (min ${s[0]})`;
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'nm-compiler-cost-'));
  console.log(`BPF_PROG_TEST_RUN, repeat ${REPEAT}, ${ROUNDS} interleaved rounds; ns per run: median (min)`);
  try {
    for (const pair of PAIRS) {
      let anchor: ReturnType<typeof loadSingle> | undefined;
      if (ANCHORS) {
        const object = join(tmp, pair.anchor.replace(/\.c$/, '.o'));
        buildObject(join(ANCHOR_DIR, pair.anchor), object);
        anchor = loadSingle(object, pair.type);
      }
      console.log(`\n${pair.title}: ${pair.text}`);
      try {
        for (const c of pair.cases) {
          const compiled = compile(pair.text, pair.hook, c.probability ?? pair.probability);
          const nm = loadCompiled(compiled);
          try {
            const frame = FRAMES[c.frame];
            nsPerRun(nm.prog, frame);
            if (anchor) nsPerRun(anchor.prog, frame);
            const ours: number[] = [];
            const theirs: number[] = [];
            for (let r = 0; r < ROUNDS; r++) {
              ours.push(nsPerRun(nm.prog, frame));
              if (anchor) theirs.push(nsPerRun(anchor.prog, frame));
            }
            const line = `  ${c.frame.padEnd(24)} ${c.note.padEnd(52)} netmangle ${summary(ours)}`;
            console.log(anchor ? `${line}   anchor ${summary(theirs)}` : line);
          } finally {
            nm.close();
          }
        }
        console.log(`  (${compile(pair.text, pair.hook, pair.probability).insns.length} instructions emitted)`);
      } finally {
        await anchor?.close();
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
