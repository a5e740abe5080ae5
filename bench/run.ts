/**
 * netmangle's benchmarks, side by side with their anchors in one run (issue 7):
 *
 *   npm run bench               full run, writes BENCHMARKS.md (under 10 minutes)
 *   npm run bench -- --quick    smoke run: same code paths, fewer rounds and smaller inputs
 *
 *   npm run bench -- --only delay    one section (or several, comma-separated) alone
 *
 * Options: --out FILE (default BENCHMARKS.md in the repository), --only cost,many,attach,replay,live,delay,service
 * (6. delay: the user-space delay line's own overhead, issue 9; 7. service: fault created through `netmangle serve`, issue 14), --no-install (do not apt-get missing
 * tools). Needs root (it loads programs and builds labs).
 *
 * Every figure is a ratio against an anchor measured in the same rounds; a section that fails
 * says so in the report instead of showing figures, and the run then exits with status 1.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeError } from '../src/errors.js';
import { cleanupAll, onCleanup } from './lib/cleanup.js';
import type { BenchContext, SectionResult } from './lib/context.js';
import { describeEnvironment, installMissingPackages } from './lib/environment.js';
import { table } from './lib/report.js';
import { measureCost } from './sections/cost.js';
import { measureManyRules } from './sections/many.js';
import { measureAttach } from './sections/attach.js';
import { measureReplay } from './sections/replay.js';
import { measureLive } from './sections/live.js';
import { measureDelay } from './sections/delay.js';
import { measureService } from './sections/service.js';

interface Section {
  key: string;
  title: string;
  run: (ctx: BenchContext) => Promise<SectionResult>;
}

const SECTIONS: Section[] = [
  { key: 'cost', title: '1. Cost per packet in the kernel', run: measureCost },
  { key: 'many', title: '2. Many rules: one program against a chain of programs', run: measureManyRules },
  { key: 'attach', title: '3. From rule to attached program', run: measureAttach },
  { key: 'replay', title: '4. Offline replay', run: measureReplay },
  { key: 'live', title: '5. Live throughput', run: measureLive },
  { key: 'delay', title: '6. Delay line', run: measureDelay },
  { key: 'service', title: '7. Fault created → attached, through the service', run: measureService },
];

interface Options {
  quick: boolean;
  out: string;
  only?: string[];
  install: boolean;
}

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function usage(): string {
  return 'usage: npm run bench [-- --quick] [--out FILE] [--only cost,many,attach,replay,live,delay,service] [--no-install]\n';
}

function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, out: join(root, 'BENCHMARKS.md'), install: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') o.quick = true;
    else if (a === '--no-install') o.install = false;
    else if (a === '--out' && argv[i + 1]) o.out = resolve(argv[++i]!);
    else if (a === '--only' && argv[i + 1]) o.only = argv[++i]!.split(',');
    else if (a === '--help' || a === '-h') {
      process.stdout.write(usage());
      process.exit(0);
    } else {
      process.stderr.write(`bench: unknown argument ${a}\n${usage()}`);
      process.exit(2);
    }
  }
  const known = SECTIONS.map((s) => s.key);
  for (const k of o.only ?? []) {
    if (!known.includes(k)) {
      process.stderr.write(`bench: --only ${k}: sections are ${known.join(', ')}\n`);
      process.exit(2);
    }
  }
  return o;
}

/** The commit measured, and whether the code differed from it. */
function commitMeasured(): string {
  const head = spawnSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  if (head.status !== 0) return 'unknown (not a git checkout)';
  const dirty = spawnSync('git', ['-C', root, 'status', '--porcelain', '--', 'src', 'bench', 'bin', 'package.json'], { encoding: 'utf8' });
  return `${head.stdout.trim()}${dirty.stdout.trim() ? ' with uncommitted changes in src/, bench/, bin/ or package.json' : ''}`;
}

/** The command as the user typed it, as far as it can be told. */
function commandLine(argv: string[]): string {
  const args = argv.length ? ` ${argv.join(' ')}` : '';
  if (process.env.npm_lifecycle_event === 'bench') return `npm run bench${args ? ` --${args}` : ''}`;
  return `node dist/bench/run.js${args}`;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const opts = parseArgs(argv);
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    process.stderr.write('bench: needs root (it loads BPF programs and builds network namespaces); run it with sudo\n');
    return 2;
  }
  const started = Date.now();
  const startedAt = new Date(started).toISOString();
  const log = (line: string) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const tmp = mkdtempSync(join(tmpdir(), 'netmangle-bench-'));
  onCleanup('temporary directory', () => rmSync(tmp, { recursive: true, force: true }));
  const runId = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 2).toString(36)}`.slice(-6);
  const ctx: BenchContext = { quick: opts.quick, tmp, root, runId, log };

  const installedNow = opts.install ? installMissingPackages(log) : [];

  const parts: string[] = [];
  const headlines: string[] = [];
  let failed = 0;
  try {
    for (const section of SECTIONS) {
      if (opts.only && !opts.only.includes(section.key)) continue;
      log(`section ${section.title}`);
      try {
        const r = await section.run(ctx);
        parts.push(r.markdown);
        headlines.push(...r.headlines);
      } catch (err) {
        failed++;
        log(`section ${section.title} failed: ${describeError(err)}`);
        parts.push(`## ${section.title}\n\nNot measured: the run failed: ${describeError(err).split('\n')[0]}\n`);
      }
    }
  } finally {
    await cleanupAll();
  }

  const seconds = (Date.now() - started) / 1000;
  const env = describeEnvironment();
  const doc = [
    '# netmangle benchmarks',
    '',
    opts.quick
      ? '**Quick smoke run** (`--quick`): fewer rounds, fewer runs and smaller files than a full run; its figures are indicative only.\n'
      : '',
    'Written by `npm run bench` (bench/run.ts). Every figure below was measured by the run described here, on this machine, ' +
      'beside its anchor in the same run; runs are interleaved (A B B A …) and reduced to medians, and ratios are taken per round ' +
      'before the median, because the machine is shared and noisy. Tests never assert these figures.',
    '',
    table(['', ''], [
      ['command', `\`${commandLine(argv)}\``],
      ['commit', commitMeasured()],
      ['started', startedAt],
      ...env.rows.filter(([k]) => k !== 'date').map(([k, v]) => [k, v]),
      ['bench wall time', `${seconds.toFixed(0)} s`],
      ...(installedNow.length ? [['installed by this run', installedNow.join(', ')]] : []),
    ], ['l', 'l']),
    '',
    '## Headlines',
    '',
    ...(headlines.length ? headlines.map((h) => `- ${h}`) : ['- (no section produced figures)']),
    '',
    ...parts,
  ].join('\n');
  writeFileSync(opts.out, doc.replace(/\n{3,}/g, '\n\n'));
  log(`wrote ${opts.out} in ${seconds.toFixed(0)} s`);
  for (const h of headlines) process.stdout.write(`${h}\n`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    process.stderr.write(`bench: ${describeError(err)}\n`);
    await cleanupAll();
    process.exit(1);
  },
);
