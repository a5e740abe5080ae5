/**
 * `netmangle replay RULES IN -o OUT`: run a capture through the compiled rules offline and
 * write the packets that leave. Needs no privileges with --engine jit (default) or interp;
 * --engine kernel runs the same bytecode through BPF_PROG_TEST_RUN (root).
 *
 * RULES may also be a BPF object (a name ending in .o, or any ELF file): one program of it
 * (--section, as for `netmangle load`) runs instead of compiled rules.
 *
 * stdout gets the per-rule summary table (or one JSON object with --json); a progress bar is
 * drawn on stderr when it is a terminal and the input is large.
 */
import { printable, printableJson } from '../../printable.js';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import type { Hook } from '../../rules/ast.js';
import { addTriggerOptions, applyForOption, isRulesFile, parseMaxHeld, readRules, triggerOptions, type RuleSourceOptions } from './run.js';

interface ReplayCliOptions extends RuleSourceOptions {
  for?: string;
  output?: string;
  engine: string;
  format?: string;
  json?: boolean;
  progress?: boolean;
  section?: string;
  maxHeld?: string;
}

/** Inputs above this size get a progress bar on a terminal. */
const PROGRESS_MIN_BYTES = 16 * 1024 * 1024;

/** A BPF object: a name ending in .o, or a file that starts with the ELF magic. */
function isObjectFile(source: string): boolean {
  if (/\.o$/i.test(source)) return true;
  let fd: number | undefined;
  try {
    fd = openSync(source, 'r');
    const magic = Buffer.alloc(4);
    return readSync(fd, magic, 0, 4, 0) === 4 && magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function parseSeed(text: string | undefined): { seed: number; seedChosen: boolean } | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === '' || !Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new UsageError(`--seed ${text}: must be an integer from 0 to 4294967295`);
  return { seed: n, seedChosen: false };
}

export function register(program: Command): void {
  const cmd = program
    .command('replay')
    .description('run a capture through the rules (or a program of a BPF object) offline and write the packets that leave (no root needed)')
    .argument('<rules>', "a one-line rule 'MATCH => ACTION[, ACTION]...' (with --hook), a rules file (.yaml), or a BPF object (.o)")
    .argument('<in>', 'capture to read (pcap or pcapng)')
    .option('-o, --output <file>', 'capture to write (.pcapng: with a comment on every changed packet; otherwise pcap)')
    .option('--hook <hook>', 'xdp, ingress or egress: the hook of a one-line rule, or which hook of a rules file to replay')
    .option('--section <name>', 'for an object: the program to run, by section or function name (needed when several fit)')
    .option('--dev <dev>', 'which interface of a rules file to replay (when it names several)')
    .option('--netns <name>', 'which namespace of a rules file to replay (when it names several)')
    .option('--probability <p>', 'act on a matching packet with this probability (one-line rule)')
    .option('--every <n>', 'act on the Nth, 2Nth ... matching packet (one-line rule)');
  addTriggerOptions(cmd)
    .option('--for <duration>', 'stop acting this long after the rule\'s first matching packet, by the capture\'s clock (one-line rule)')
    .option('--seed <n>', "seed of the random decisions (for an object: of the VM's bpf_get_prandom_u32; default: chosen and printed)")
    .option('--name <name>', 'name of the one-line rule in the summary and comments')
    .option('--checksum <mode>', 'fix (default) or keep: leave checksums stale on purpose (one-line rule)')
    .option('--max-held <limit>', 'most packets delay and reorder rules hold at once, PACKETS[,BYTES] (default 10000,64MiB); beyond it packets go on at once, counted')
    .option('--engine <engine>', 'jit (default), interp (the reference interpreter) or kernel (BPF_PROG_TEST_RUN, needs root)', 'jit')
    .option('--format <format>', 'pcap or pcapng (default: from the output name)')
    .option('--json', 'print the summary as one JSON object')
    .option('--no-progress', 'no progress bar, even on a terminal')
    .action(async (rules: string, input: string, opts: ReplayCliOptions) => {
      if (!opts.output) throw new UsageError('replay needs -o OUT, the capture to write');
      if (!['jit', 'interp', 'kernel'].includes(opts.engine)) throw new UsageError(`--engine ${opts.engine}: must be jit, interp or kernel`);
      if (opts.format !== undefined && opts.format !== 'pcap' && opts.format !== 'pcapng') {
        throw new UsageError(`--format ${opts.format}: must be pcap or pcapng`);
      }
      if (opts.output === '-' || input === '-') throw new UsageError('replay reads and writes files, not standard input or output', { hint: 'give file paths' });
      if (!existsSync(input)) throw new UsageError(`no capture ${input}`);
      if (opts.hook !== undefined && !['xdp', 'ingress', 'egress'].includes(opts.hook)) {
        throw new UsageError(`--hook ${opts.hook}: must be xdp, ingress or egress`);
      }
      if (isObjectFile(rules)) {
        await replayObjectCommand(rules, input, opts);
        return;
      }
      if (opts.section !== undefined) throw new UsageError('--section chooses a program of a BPF object; rules have none to choose', { hint: 'give an object file (.o), or drop --section' });
      const file = isRulesFile(rules);
      if (!file && !opts.hook) throw new UsageError('a one-line rule needs --hook xdp|ingress|egress (where it would run)');
      if (!file && (opts.dev !== undefined || opts.netns !== undefined)) {
        throw new UsageError('--dev and --netns choose among the interfaces of a rules file; a one-line rule has none to choose');
      }
      const { selectGroups, replayCapture, formatSummaryTable } = await import('../../replay/index.js');
      // A one-line rule needs an interface name to parse; replay has none, so it gets a placeholder.
      const loaded = await readRules(rules, file
        ? { seed: opts.seed }
        : { dev: 'replay', hook: opts.hook, probability: opts.probability, every: opts.every, seed: opts.seed, name: opts.name, checksum: opts.checksum, ...triggerOptions(opts) });
      if (file) {
        const given = Object.keys(triggerOptions(opts)).concat(opts.for !== undefined ? ['for'] : []);
        if (given.length > 0) throw new UsageError(`--${given[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} applies to a one-line rule; a rules file sets it per rule`);
      }
      applyForOption(loaded.groups, opts.for);
      if (file) {
        for (const o of ['probability', 'every', 'name', 'checksum'] as const) {
          if (opts[o] !== undefined) throw new UsageError(`--${o} applies to a one-line rule; a rules file sets ${o} per rule`);
        }
      }
      const groups = selectGroups(loaded.groups, file ? { hook: opts.hook as Hook | undefined, dev: opts.dev, netns: opts.netns } : {});
      const maxHeld = opts.maxHeld === undefined ? undefined : parseMaxHeld(opts.maxHeld);
      if (maxHeld && !groups.some((g) => g.rules.some((r) => r.actions.some((a) => a.kind === 'delay' || a.kind === 'reorder')))) {
        throw new UsageError('--max-held applies to delay and reorder rules, and these rules hold no packets');
      }

      const bar = await progressBar(input, opts);
      let summary;
      try {
        summary = await replayCapture({
          groups, seed: loaded.seed, engine: opts.engine as 'jit' | 'interp' | 'kernel', input, output: opts.output,
          format: opts.format as 'pcap' | 'pcapng' | undefined, maxHeld,
          onProgress: bar ? (bytes, packets) => bar.update(bytes, { packets }) : undefined,
        });
      } finally {
        bar?.stop();
      }
      if (opts.json) {
        process.stdout.write(`${printableJson(JSON.stringify({ ...summary, seedChosen: loaded.seedChosen }))}\n`);
        return;
      }
      const lines = formatSummaryTable(summary, { seedChosen: loaded.seedChosen });
      process.stdout.write(`${lines.map((l) => printable(l)).join('\n')}\n`);
    });
}

/** Starts a progress bar on stderr when it is a terminal and the input is large. */
async function progressBar(input: string, opts: ReplayCliOptions): Promise<import('cli-progress').SingleBar | undefined> {
  const size = statSync(input).size;
  if (opts.progress === false || !process.stderr.isTTY || size < PROGRESS_MIN_BYTES) return undefined;
  const { default: progress } = await import('cli-progress');
  const bar = new progress.SingleBar({
    stream: process.stderr,
    format: 'replay [{bar}] {percentage}% | {packets} packets | ETA {eta_formatted}',
    hideCursor: true,
    clearOnComplete: true,
  }, progress.Presets.shades_classic);
  bar.start(size, 0, { packets: 0 });
  return bar;
}

/** `netmangle replay OBJ.o IN -o OUT`: one program of a BPF object instead of compiled rules. */
async function replayObjectCommand(file: string, input: string, opts: ReplayCliOptions): Promise<void> {
  for (const o of ['dev', 'netns', 'probability', 'every', 'name', 'checksum', 'maxHeld'] as const) {
    if (opts[o] !== undefined) throw new UsageError(`--${o === 'maxHeld' ? 'max-held' : o} applies to rules; ${file} is a BPF object`);
  }
  const triggers = Object.keys(triggerOptions(opts)).concat(opts.for !== undefined ? ['for'] : []);
  if (triggers.length > 0) {
    throw new UsageError(`--${triggers[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} applies to rules; ${file} is a BPF object`);
  }
  if (!existsSync(file)) throw new UsageError(`no object file ${file}`);
  const hook = opts.hook as Hook | undefined;
  const { readObjectFile, chooseProgram } = await import('../../elf/load.js');
  const { replayObject, hookForProgram, formatSummaryTable } = await import('../../replay/index.js');
  const object = readObjectFile(file);
  const name = chooseProgram(object, { select: opts.section, wantType: hook === undefined ? undefined : hook === 'xdp' ? 'xdp' : 'sched_cls' });
  const chosenHook = hookForProgram(object.programs.find((p) => p.name === name)!, hook);
  const { randomSeed } = await import('../../compiler/prng.js');
  const { seed, seedChosen } = parseSeed(opts.seed) ?? { seed: randomSeed(), seedChosen: true };
  const bar = await progressBar(input, opts);
  let summary;
  try {
    summary = await replayObject({
      object, program: name, hook: chosenHook, seed, engine: opts.engine as 'jit' | 'interp' | 'kernel', input, output: opts.output!,
      format: opts.format as 'pcap' | 'pcapng' | undefined,
      onProgress: bar ? (bytes, packets) => bar.update(bytes, { packets }) : undefined,
    });
  } finally {
    bar?.stop();
  }
  if (opts.json) {
    process.stdout.write(`${printableJson(JSON.stringify({ ...summary, seedChosen }))}\n`);
    return;
  }
  // A chosen seed matters only where the program draws from the VM's generator.
  const lines = formatSummaryTable(summary, { seedChosen: seedChosen && summary.engine !== 'kernel' });
  process.stdout.write(`${lines.map((l) => printable(l)).join('\n')}\n`);
}
