/**
 * 3. From rule to attached program: `netmangle run` from a cold start, the library inside a
 * running process, and the C workflow (clang, then `tc filter add`), interleaved.
 */
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NetmangleError } from '../../src/errors.js';
import { createPcapWriter } from '../../src/pcap/index.js';
import { buildPacket } from '../../test/helpers/packets.js';
import { attachGroups } from '../../src/live/index.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { ANCHOR_DIR, clangArgv } from '../lib/anchors.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV, type BenchLab } from '../lib/lab.js';
import { ms, ratio, table, verdict } from '../lib/report.js';
import { BENCH_SEED, pshRule } from '../lib/rules.js';
import { interleave, max, median, medianRatio, min } from '../lib/stats.js';

function elapsedMs(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function runArgs(l: BenchLab): string[] {
  return ['run', pshRule.text, '--dev', DEV, '--hook', 'egress', '--netns', l.senderNs, '--probability', String(pshRule.probability), '--seed', String(BENCH_SEED)];
}

/** The same rule, interface and seed as runArgs, as a rules file (`netmangle run FILE`). */
function rulesFileText(l: BenchLab): string {
  return [
    `seed: ${BENCH_SEED}`,
    'rules:',
    '  - name: psh',
    `    dev: ${DEV}`,
    `    netns: ${l.senderNs}`,
    '    hook: egress',
    `    rule: ${pshRule.text}`,
    `    probability: ${pshRule.probability}`,
    '',
  ].join('\n');
}

/** A capture of one TCP segment with PSH (pcap). */
async function writeOnePacketCapture(path: string): Promise<void> {
  const frame = buildPacket({ l3: { kind: 'ipv4' }, l4: { kind: 'tcp', flags: 0x018, payload: new Uint8Array(20) } }).frame;
  const w = createPcapWriter(path);
  w.write({ data: frame, tsSec: 1_700_000_000, tsNsec: 0 });
  await w.close();
}

/** Starts `netmangle run`, returns the ms until its "attached" line, then stops it (SIGINT) and waits for it to detach. */
function timeCli(bin: string, l: BenchLab, env?: NodeJS.ProcessEnv, argv: string[] = runArgs(l)): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    let attachedMs: number | undefined;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (attachedMs === undefined && /^attached/m.test(out)) {
        attachedMs = elapsedMs(t0);
        // A moment for it to install its signal handlers, so SIGINT means "detach and exit 0".
        setTimeout(() => child.kill('SIGINT'), 300);
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', (e) => reject(e));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (attachedMs === undefined) reject(new NetmangleError(`netmangle run never printed "attached" (exit ${code}): ${(err || out).trim().split('\n').pop()}`));
      else if (code !== 0) reject(new NetmangleError(`netmangle run exited with ${code ?? signal} after SIGINT: ${err.trim().split('\n').pop()}`));
      else resolve(attachedMs);
    });
  });
}

/** Parses the rule, compiles, loads and attaches it in this process; returns the ms that took, then detaches. */
function timeLibrary(l: BenchLab): number {
  const t0 = process.hrtime.bigint();
  const { groups } = parseRuleLine(pshRule.text, { dev: DEV, hook: 'egress', netns: l.senderNs, probability: pshRule.probability });
  const session = attachGroups(groups, { seed: BENCH_SEED });
  const t = elapsedMs(t0);
  session.detach();
  return t;
}

function timed(argv: string[], what: string, env?: NodeJS.ProcessEnv): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env });
  const t = elapsedMs(t0);
  if (r.status !== 0) throw new NetmangleError(`${what}: \`${argv.join(' ')}\` failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`);
  return t;
}

export async function measureAttach(ctx: BenchContext): Promise<SectionResult> {
  const rounds = ctx.quick ? 3 : 9;
  const bin = join(ctx.root, 'bin', 'netmangle');
  const source = join(ANCHOR_DIR, 'tc_psh_egress.c');
  const object = join(ctx.tmp, 'attach_psh.o');
  const clang = clangArgv(source, object);
  const l = await benchLab(ctx, 'attach');
  try {
    const tc = ['tc', '-n', l.senderNs, 'filter', 'add', 'dev', DEV, 'egress', 'bpf', 'da', 'obj', object, 'sec', 'tc'];
    timed(['tc', '-n', l.senderNs, 'qdisc', 'add', 'dev', DEV, 'clsact'], 'add clsact');
    // Warm-up, untimed: page cache for node, clang and tc; the library's first call loads its modules and probes the kernel.
    const firstLibraryMs = timeLibrary(l);
    await timeCli(bin, l);
    timed(clang, 'clang');
    timed(tc, 'tc filter add');
    timed(['tc', '-n', l.senderNs, 'filter', 'del', 'dev', DEV, 'egress'], 'tc filter del');

    const node = [process.execPath, '-e', ''];
    // NODE_EXTRA_CA_CERTS makes every Node.js start read and parse that certificate file
    // (tens of ms on some machines), netmangle's included, though it never speaks TLS; when it
    // is set, the floor without it is shown too.
    const extraCa = process.env.NODE_EXTRA_CA_CERTS;
    const envWithoutCa = { ...process.env };
    delete envWithoutCa.NODE_EXTRA_CA_CERTS;
    const help = [bin, '--help'];
    // Start-up of the other commands: the same rule from a rules file, built to an object, and
    // replayed on a capture of one packet.
    const rulesFile = join(ctx.tmp, 'attach-rules.yaml');
    writeFileSync(rulesFile, rulesFileText(l));
    const fileArgs = ['run', rulesFile];
    const build = [bin, 'build', pshRule.text, '--hook', 'egress', '--probability', String(pshRule.probability), '--seed', String(BENCH_SEED), '-o', join(ctx.tmp, 'attach-build.o')];
    const onePacket = join(ctx.tmp, 'attach-one.pcap');
    await writeOnePacketCapture(onePacket);
    const replay = [bin, 'replay', pshRule.text, onePacket, '-o', join(ctx.tmp, 'attach-one-out.pcap'), '--hook', 'egress',
      '--probability', String(pshRule.probability), '--seed', String(BENCH_SEED), '--no-progress'];
    // Warm-up of each, untimed.
    await timeCli(bin, l, undefined, fileArgs);
    timed(build, 'netmangle build');
    timed(replay, 'netmangle replay');
    const clangParts: number[] = [];
    const tcParts: number[] = [];
    ctx.log(`attach: ${rounds} rounds of netmangle run, the library call, clang + tc filter add`);
    const m = await interleave(rounds, [
      ['cli', () => timeCli(bin, l)],
      ['node', () => timed(node, 'node')],
      ['nodeNoCa', () => (extraCa ? timed(node, 'node', envWithoutCa) : 0)],
      ['cliNoCa', () => (extraCa ? timeCli(bin, l, envWithoutCa) : 0)],
      ['help', () => timed(help, 'netmangle --help')],
      ['file', () => timeCli(bin, l, undefined, fileArgs)],
      ['build', () => timed(build, 'netmangle build')],
      ['replay', () => timed(replay, 'netmangle replay')],
      ['lib', () => timeLibrary(l)],
      ['c', () => {
        const a = timed(clang, 'clang');
        const b = timed(tc, 'tc filter add');
        timed(['tc', '-n', l.senderNs, 'filter', 'del', 'dev', DEV, 'egress'], 'tc filter del');
        clangParts.push(a);
        tcParts.push(b);
        return a + b;
      }],
    ] as const);

    const range = (v: number[]) => `${ms(median(v))} (${ms(min(v))}–${ms(max(v))})`;
    const cliVsClang = medianRatio(m.cli, clangParts);
    const cliVsC = medianRatio(m.cli, m.c);
    const libVsC = medianRatio(m.lib, m.c);
    const rows = [
      ['`netmangle run …` until its "attached" line (cold start: node, compile, load, attach)', range(m.cli), ratio(cliVsClang), ratio(cliVsC)],
      ...(extraCa ? [['the same without NODE_EXTRA_CA_CERTS (set here; Node.js reads that file at every start)', range(m.cliNoCa), ratio(medianRatio(m.cliNoCa, clangParts)), ratio(medianRatio(m.cliNoCa, m.c))]] : []),
      ['library: `parseRuleLine` + `attachGroups` in a running process', range(m.lib), ratio(medianRatio(m.lib, clangParts)), ratio(libVsC)],
      ['for scale: `node -e \'\'` (Node.js starting and exiting)', range(m.node), ratio(medianRatio(m.node, clangParts)), ratio(medianRatio(m.node, m.c))],
      ...(extraCa ? [['for scale: `node -e \'\'` without NODE_EXTRA_CA_CERTS (set here; Node.js reads that file at every start)', range(m.nodeNoCa), ratio(medianRatio(m.nodeNoCa, clangParts)), ratio(medianRatio(m.nodeNoCa, m.c))]] : []),
      ['for scale: `netmangle --help` (Node.js and the CLI\'s start)', range(m.help), ratio(medianRatio(m.help, clangParts)), ratio(medianRatio(m.help, m.c))],
      ['start-up: `netmangle run RULES.yaml` (the same rule from a rules file) until "attached"', range(m.file), ratio(medianRatio(m.file, clangParts)), ratio(medianRatio(m.file, m.c))],
      ['start-up: `netmangle build \'…\' -o OBJ.o` (the same rule to an ELF object)', range(m.build), ratio(medianRatio(m.build, clangParts)), ratio(medianRatio(m.build, m.c))],
      ['start-up: `netmangle replay \'…\'` on a capture of one packet', range(m.replay), ratio(medianRatio(m.replay, clangParts)), ratio(medianRatio(m.replay, m.c))],
      ['anchor: `clang -O2 -target bpf …` alone', range(clangParts), '1.00×', ratio(medianRatio(clangParts, m.c))],
      ['anchor: `tc filter add … bpf da obj … sec tc` alone', range(tcParts), ratio(medianRatio(tcParts, clangParts)), ratio(medianRatio(tcParts, m.c))],
      ['anchor: clang + tc filter add', range(m.c), ratio(medianRatio(m.c, clangParts)), '1.00×'],
    ];
    const fileVsLine = medianRatio(m.file, m.cli);
    const md = [
      '## 3. From rule to attached program',
      '',
      `Wall time from starting the command to the program being attached, ${rounds} rounds interleaved, medians (range). ` +
        `The rule is the PSH rule (\`${pshRule.text}\`, probability ${pshRule.probability}), attached at egress of a veth in a lab namespace. ` +
        `netmangle: \`bin/netmangle ${runArgs(l).slice(0, 1).join(' ')} '…' --dev ${DEV} --hook egress --netns NS --probability ${pshRule.probability} --seed N\` ` +
        'spawned fresh each round, timed until it prints its first line ("attached …", printed once the tcx link exists), then stopped with SIGINT (untimed); ' +
        'and the same rule through the library (`parseRuleLine`, `attachGroups`: compile, create and seed the maps, load, attach) in this process, ' +
        `after one untimed first call (which took ${ms(firstLibraryMs)}: module loading and the kernel feature probe). ` +
        `Anchor: \`${clang.slice(0, -3).join(' ')} tc_psh_egress.c -o OBJ.o\` then \`tc -n NS filter add dev ${DEV} egress bpf da obj … sec tc\` on a device that already has its clsact qdisc ` +
        '(each filter is deleted again, untimed, before the next round).',
      '',
      table(['variant', 'ms', 'ratio to clang alone', 'ratio to clang + tc'], rows, ['l', 'r', 'r', 'r']),
      '',
      `A rules file starts in ${ratio(fileVsLine)} of the time of the same rule on the command line (goal ≤ 1.1× — ${verdict(fileVsLine <= 1.1)}).`,
      '',
      `Goal: the CLI below clang alone — ${verdict(cliVsClang < 1)} (ratio ${ratio(cliVsClang)}). ` +
        `Node.js alone takes ${ms(median(m.node))} to start and exit here, ${ratio(medianRatio(m.node, clangParts))} of clang` +
        (extraCa
          ? `; ${ms(median(m.nodeNoCa))} (${ratio(medianRatio(m.nodeNoCa, clangParts))}) without NODE_EXTRA_CA_CERTS, and netmangle run then reaches "attached" in ${ms(median(m.cliNoCa))} (${ratio(medianRatio(m.cliNoCa, clangParts))} of clang).`
          : medianRatio(m.node, clangParts) >= 1 ? ', so no CLI that starts Node.js can meet this goal on this machine.' : '.'),
      '',
    ].join('\n');
    return {
      markdown: md,
      headlines: [
        `rule to attached: \`netmangle run\` cold start / clang alone = ${ratio(cliVsClang)} (goal < 1); / clang + tc = ${ratio(cliVsC)}`,
        `start-up: \`run\` from a rules file / the same rule on the command line = ${ratio(fileVsLine)} (goal ≤ 1.1); \`--help\` ${ms(median(m.help))}, \`build\` ${ms(median(m.build))}, one-packet \`replay\` ${ms(median(m.replay))}`,
        `rule to attached: library call in a running process / clang + tc = ${ratio(libVsC)}`,
      ],
    };
  } finally {
    await l.down();
  }
}
