/**
 * `netmangle run`: compile rules, attach them, show what they do, detach on exit.
 *
 * The first stdout line starts with "attached" once every program is on its hook (scripts and
 * the lab's experiments wait for it). On a terminal a counter table is redrawn every second;
 * otherwise nothing more is printed until exit, when one line per rule gives the totals as
 * name=value pairs.
 */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { randomSeed } from '../../compiler/prng.js';
import { NetmangleError, UsageError, describeError } from '../../errors.js';
import { formatDelayStats } from '../../delay/stats.js';
import type { Fault, FaultCounters } from '../../api/fault.js';
import type { Hook, RuleGroup } from '../../rules/ast.js';
import { parseDuration, setLongTimeout } from '../duration.js';
import { printable } from '../../printable.js';
import { parsePriority } from '../priority.js';

export interface RuleSourceOptions {
  dev?: string;
  hook?: string;
  netns?: string;
  probability?: string;
  every?: string;
  seed?: string;
  name?: string;
  checksum?: string;
  first?: string;
  after?: string;
  perConnection?: boolean;
  connections?: string;
  lengths?: string;
  limit?: string;
  startAfter?: string;
}

/** Trigger options of a one-line rule that a rules file gives per rule instead. */
const LINE_TRIGGERS = ['first', 'after', 'perConnection', 'connections', 'lengths', 'limit', 'startAfter'] as const;
const optionName = (o: string): string => `--${o.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** Whether RULES names a rules file: a name ending in .yaml/.yml/.json, or an existing file that is not a rule. */
export function isRulesFile(source: string): boolean {
  return /\.(ya?ml|json)$/i.test(source) || (existsSync(source) && !source.includes('=>'));
}

/** Rules from a one-line rule or a rules file, with the command-line options applied. */
export async function readRules(source: string, opts: RuleSourceOptions): Promise<{ groups: RuleGroup[]; seed: number; seedChosen: boolean }> {
  // Loaded on demand, so `netmangle --help` and other commands start without the rule language.
  const { loadRulesFile, parseRuleLine } = await import('../../rules/load.js');
  const isFile = isRulesFile(source);
  let groups: RuleGroup[];
  let fileSeed: number | undefined;
  if (isFile) {
    if (!existsSync(source)) throw new UsageError(`no rules file ${source}`);
    for (const o of ['dev', 'hook', 'probability', 'every', 'name'] as const) {
      if (opts[o] !== undefined) throw new UsageError(`--${o} applies to a one-line rule; a rules file sets ${o} per rule`);
    }
    for (const o of LINE_TRIGGERS) {
      if (opts[o] !== undefined) throw new UsageError(`${optionName(o)} applies to a one-line rule; a rules file sets ${optionName(o).slice(2)}: per rule`);
    }
    const r = loadRulesFile(source);
    groups = r.groups;
    fileSeed = r.seed;
    if (opts.netns) for (const g of groups) g.netns ??= opts.netns;
  } else {
    if (!opts.dev) throw new UsageError('a one-line rule needs --dev DEV (the interface to attach to)');
    if (!opts.hook) throw new UsageError('a one-line rule needs --hook xdp|ingress|egress');
    if (!['xdp', 'ingress', 'egress'].includes(opts.hook)) {
      throw new UsageError(`--hook ${opts.hook}: must be xdp, ingress or egress`);
    }
    const r = parseRuleLine(source, {
      dev: opts.dev,
      hook: opts.hook as Hook,
      netns: opts.netns,
      // A number or a percentage ("5%"): checkProbability reads both.
      probability: opts.probability,
      every: opts.every === undefined ? undefined : parseNumber(opts.every, '--every'),
      name: opts.name,
      checksum: opts.checksum === undefined ? undefined : (opts.checksum as 'fix' | 'keep'),
      first: opts.first,
      after: opts.after,
      perConnection: opts.perConnection,
      connections: opts.connections,
      lengths: opts.lengths,
      limit: opts.limit,
      startAfter: opts.startAfter,
    });
    groups = r.groups;
  }
  const given = opts.seed !== undefined ? parseNumber(opts.seed, '--seed') : fileSeed;
  if (given !== undefined && (!Number.isInteger(given) || given < 0 || given > 0xffffffff)) {
    throw new UsageError(`--seed ${opts.seed}: must be an integer from 0 to 4294967295`);
  }
  return { groups, seed: given ?? randomSeed(), seedChosen: given === undefined };
}

/** Trigger options of a one-line rule, shared by run, replay and build. */
export function addTriggerOptions(cmd: Command): Command {
  return cmd
    .option('--first <n>', 'act on the first N matching packets (of those --after and --every let through)')
    .option('--after <n>', 'skip the first N matching packets')
    .option('--per-connection', 'keep the counts of --first, --after and --every per connection (both directions as one)')
    .option('--connections <n>', 'connections --per-connection remembers (LRU; default 65536)')
    .option('--limit <rate>', 'act on at most this many packets (e.g. 100/s, 6000/min, 10/h), a token bucket kept by the program')
    .option('--start-after <duration>', 'act only this long after the rule\'s first matching packet (kept by the program)')
    .option('--lengths <mode>', 'fix (default) or keep: whether truncate shrinks the IP and UDP length fields')
}

/** The trigger options of `opts`, to pass on to readRules. */
export function triggerOptions(opts: RuleSourceOptions): RuleSourceOptions {
  const out: RuleSourceOptions = {};
  for (const o of LINE_TRIGGERS) if (opts[o] !== undefined) (out as Record<string, unknown>)[o] = opts[o];
  return out;
}

/** `--for` as the rules' own window (nanoseconds from each rule's first matching packet). */
export function applyForOption(groups: RuleGroup[], forText: string | undefined): number | undefined {
  if (forText === undefined) return undefined;
  const forMs = parseDuration(forText, '--for');
  for (const g of groups) for (const r of g.rules) r.forNs ??= forMs * 1_000_000;
  return forMs;
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3 };

/** `--max-held PACKETS[,BYTES]` or `--max-held BYTES` (a size with its unit: 16MiB, 500KB). */
export function parseMaxHeld(text: string): { packets: number; bytes: number } {
  const bad = (why: string): never => {
    throw new UsageError(`--max-held ${text}: ${why}`, { hint: 'for example --max-held 1000 (packets), --max-held 16MiB (bytes) or --max-held 1000,16MiB' });
  };
  const limits = { packets: 10_000, bytes: 64 * 1024 * 1024 };
  const parts = text.split(',').map((p) => p.trim());
  if (parts.length > 2 || parts.some((p) => p === '')) bad('give PACKETS, BYTES or PACKETS,BYTES');
  for (const [i, p] of parts.entries()) {
    const m = /^(\d+)\s*([a-z]*)$/i.exec(p);
    const unit = m?.[2]?.toLowerCase() ?? '';
    if (!m || !(unit in SIZE_UNITS)) bad(`${p} is not a count or a size (units: B, KB, KiB, MB, MiB, GB, GiB)`);
    const n = Number(m![1]) * SIZE_UNITS[unit]!;
    const isBytes = unit !== '' || (parts.length === 2 && i === 1);
    if (n < 1 || !Number.isSafeInteger(n)) bad('must be at least 1');
    if (isBytes) limits.bytes = n;
    else if (i === 0) limits.packets = n;
    if (parts.length === 2 && i === 0 && unit !== '') bad('the first of PACKETS,BYTES is a count of packets, without a unit');
  }
  return limits;
}

function parseNumber(text: string, option: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n)) throw new UsageError(`${option} ${text}: not a number`);
  return n;
}

export function register(program: Command): void {
  const cmd = program
    .command('run')
    .description('compile rules to eBPF, attach them, show live counters, detach on exit')
    .argument('<rule>', "a one-line rule 'MATCH => ACTION[, ACTION]...' or a rules file (.yaml)")
    .option('--dev <dev>', 'interface to attach to (one-line rule)')
    .option('--hook <hook>', 'xdp, ingress or egress (one-line rule)')
    .option('--netns <name>', 'network namespace of the interface: a name as ip netns lists it, or a path such as /proc/PID/ns/net')
    .option('--probability <p>', 'act on a matching packet with this probability (0 < p <= 1, or a percentage: 5%)')
    .option('--every <n>', 'act on the Nth, 2Nth ... matching packet');
  addTriggerOptions(cmd)
    .option('--seed <n>', 'seed of the random decisions (default: chosen and printed)')
    .option('--name <name>', 'name of the one-line rule in counters')
    .option('--checksum <mode>', 'fix (default) or keep: leave checksums stale on purpose')
    .option('--for <duration>', 'stop acting after this long (e.g. 30s, 5m): the program stops by its own clock (so a pinned rule does too), and run detaches')
    .option('--per-segment', 'at tc egress, make every TCP segment a packet of its own at the hook (gso_max_segs 1 while attached)')
    .option('--max-held <limit>', 'most packets a delay line holds at once, PACKETS[,BYTES] (e.g. 1000,16MiB; default 10000,64MiB); beyond it packets pass undelayed and are counted')
    .option('--pin', 'keep the rules attached after exit (see netmangle status, netmangle clear)')
    .option('--attach <path>', 'auto (default), link (XDP link / tcx) or netlink (legacy IFLA_XDP / cls_bpf)', 'auto')
    .option('--priority <n>', 'tc hooks through netlink: the cls_bpf filter priority, 1 runs first (default: after the filters already there)')
    .action(async (rule: string, opts: RuleSourceOptions & { for?: string; perSegment?: boolean; attach: string; pin?: boolean; maxHeld?: string; priority?: string }) => {
      if (opts.pin && opts.perSegment) {
        throw new UsageError('--per-segment cannot be combined with --pin: nothing would restore gso_max_segs afterwards', {
          hint: 'set it yourself with: ip link set dev DEV gso_max_segs 1',
        });
      }
      if (opts.for !== undefined) parseDuration(opts.for, '--for'); // a bad duration is refused before anything else
      if (!['auto', 'link', 'netlink'].includes(opts.attach)) throw new UsageError(`--attach ${opts.attach}: must be auto, link or netlink`);
      const priority = parsePriority(opts.priority);
      const { groups, seed, seedChosen } = await readRules(rule, opts);
      if (priority !== undefined && groups.every((g) => g.hook === 'xdp')) {
        throw new UsageError('--priority applies to tc ingress and egress (a cls_bpf filter), not xdp');
      }
      // The programs keep the deadline themselves (from each rule's first matching packet), so
      // a pinned rule stops acting on time with nobody left to detach it.
      const forMs = applyForOption(groups, opts.for);
      const maxHeld = opts.maxHeld === undefined ? undefined : parseMaxHeld(opts.maxHeld);
      const hold = groups.flatMap((g) => g.rules.flatMap((r) => r.actions.filter((a) => a.kind === 'delay' || a.kind === 'reorder')))[0];
      if (opts.pin && hold) {
        throw new UsageError(`--pin with ${hold.kind} is not possible: the delay line that holds the packets lives in the netmangle process`, { hint: `run ${hold.kind} rules without --pin` });
      }
      if (maxHeld && !hold) throw new UsageError('--max-held applies to delay and reorder rules, and these rules hold no packets');
      if (typeof process.getuid === 'function' && process.getuid() !== 0) {
        throw new NetmangleError('netmangle run needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach programs', {
          hint: 'run it with sudo, or try the rule offline first',
        });
      }
      // Started first, so it comes up while the rules compile: it removes what this process
      // attaches through netlink, and its run records, if this process dies without detaching.
      // (NETMANGLE_UNGUARDED=1 leaves it out: bench/guardian.ts measures what it costs.)
      const guard = !process.env.NETMANGLE_UNGUARDED;
      const guardian = await import('../../live/guardian.js');
      if (!opts.pin && guard) guardian.startGuardian();
      if (opts.pin) {
        const { attachGroups } = await import('../../live/index.js');
        const registry = await import('../../live/registry.js');
        const session = attachGroups(groups, { seed, path: opts.attach as 'auto' | 'link' | 'netlink', priority });
        try {
          for (const r of registry.pinGroups(session.groups, seed)) {
            process.stdout.write(`${printable(`attached and pinned ${r.rules.length} rule${r.rules.length === 1 ? '' : 's'} on ${r.dev} ${r.hook}${r.netns ? ` (netns ${r.netns})` : ''}, program id ${r.progId}, seed ${seed}: ${r.pinDir}`)}\n`);
          }
        } catch (err) {
          session.detach();
          throw err;
        }
        session.release();
        process.stdout.write('they stay attached after this command; see them with netmangle status, remove them with netmangle clear\n');
        return;
      }
      // The foreground run is the library's attach(): it records itself for `netmangle status`.
      const { attach } = await import('../../api/fault.js');
      // A delay line that stops by itself leaves its programs sending packets nowhere: the fault
      // has detached by then, and the run ends.
      let lineFailed: ((reason: string) => void) | undefined;
      const lineFailure = new Promise<string>((resolve) => (lineFailed = resolve));
      const fault = await attach({ groups, seed }, undefined, {
        seed, path: opts.attach as 'auto' | 'link' | 'netlink', perSegment: opts.perSegment, maxHeld, priority,
        onFailure: (message) => {
          process.stderr.write(`netmangle: ${printable(message)}; detached\n`);
          process.exitCode = 1;
          lineFailed!(message);
        },
      });
      // "attached" only once a netlink attachment is covered: the guardian watches this process.
      const covered = guard && fault.attachments.some((a) => a.path === 'netlink') ? guardian.guardianReady() : undefined;
      await runForeground(fault, { seed, seedChosen, forMs, perSegment: !!opts.perSegment, failure: lineFailure, covered });
    });
}

interface ForegroundOptions {
  seed: number;
  seedChosen: boolean;
  forMs?: number;
  perSegment: boolean;
  /** Settles (with the reason) when the run must stop on its own, e.g. a delay line failed. */
  failure?: Promise<string>;
  /** Settles once a crash of this process is covered (the guardian watches it). */
  covered?: Promise<unknown>;
}

async function runForeground(fault: Fault, o: ForegroundOptions): Promise<void> {
  const out = process.stdout;
  const tty = out.isTTY === true;
  // Listening before "attached" is printed: a signal sent as soon as a script reads that line
  // must detach, not meet Node's default action (exit at once, leaving everything attached).
  const stop = new Promise<string>((resolve) => {
    const on = (sig: NodeJS.Signals) => resolve(sig);
    process.once('SIGINT', on);
    process.once('SIGTERM', on);
    process.once('SIGHUP', on);
    if (o.forMs !== undefined) setLongTimeout(() => resolve(`--for ${o.forMs} ms`), o.forMs);
    void o.failure?.then(resolve);
  });
  // A signal meanwhile still ends the wait: the detach below runs all the same.
  if (o.covered) await Promise.race([o.covered, stop]);
  for (const a of fault.attachments) {
    const where = `${a.dev} ${a.hook}${a.netns ? ` (netns ${a.netns})` : ''}`;
    const n = a.rules.length;
    out.write(`attached ${n} rule${n === 1 ? '' : 's'} to ${printable(where)} via ${a.path}, program id ${a.programId}, seed ${o.seed}${o.seedChosen ? ' (chosen at random; pass --seed to repeat)' : ''}\n`);
    if (a.warning) process.stderr.write(`warning: ${printable(a.warning)}\n`);
    if (a.memoryNote) process.stderr.write(`note: ${printable(a.memoryNote)}\n`);
    if (a.gsoMaxSegsWas !== undefined) out.write(`gso_max_segs of ${printable(a.dev)} set to 1 while attached (was ${a.gsoMaxSegsWas})\n`);
  }
  let gsoWarned = false;
  let drawn = 0;
  const draw = () => {
    // Reading the counters also refreshes the delay lines' counters in the run record (status shows them).
    const snap = fault.counters();
    if (!o.perSegment && !gsoWarned && snap.gsoPackets > 0) {
      gsoWarned = true;
      process.stderr.write('note: matched packets include GSO super-packets that the kernel cuts into segments after the hook (flags like PSH end up on the last one only); --per-segment makes each segment meet the rules on its own\n');
    }
    if (!tty) return;
    const lines = formatTable(snap);
    if (drawn > 0) out.write(`\x1b[${drawn}A\x1b[J`);
    out.write(lines.join('\n') + '\n');
    drawn = lines.length;
  };
  let timer: NodeJS.Timeout | undefined;
  let reason = 'error';
  try {
    timer = setInterval(draw, 1000);
    draw();
    reason = await stop;
    clearInterval(timer);
    if (fault.attached) draw();
  } finally {
    clearInterval(timer);
    try {
      await fault.detach();
    } catch (err) {
      process.stderr.write(`netmangle: while detaching: ${printable(describeError(err), { multiline: true })}\n`);
      process.exitCode = 1;
    }
  }
  out.write(`detached (${printable(reason)})\n`);
  // The counters as they were when the programs came off their hooks.
  const totals = fault.counters();
  for (const r of totals.rules) out.write(`rule ${printable(r.name)}: matched=${r.matched} acted=${r.acted} dropped=${r.dropped}\n`);
  for (const d of totals.delayLines) out.write(`delay line ${printable(d.dev)}/${d.hook}: ${formatDelayStats(d)}\n`);
}

function formatTable(snap: FaultCounters): string[] {
  const rows: string[][] = [['rule', 'where', 'matched', 'acted', 'dropped']];
  for (const r of snap.rules) rows.push([printable(r.name), printable(`${r.dev}/${r.hook}`), String(r.matched), String(r.acted), String(r.dropped)]);
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => r[col]!.length)));
  const lines = rows.map((r) => r.map((cell, col) => (col >= 2 ? cell.padStart(widths[col]!) : cell.padEnd(widths[col]!))).join('  '));
  for (const d of snap.delayLines) lines.push(`delay line ${printable(d.dev)}/${d.hook}: ${formatDelayStats(d)}`);
  return lines;
}
