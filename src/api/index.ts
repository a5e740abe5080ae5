/**
 * netmangle as a library: `import { attach, Lab, … } from 'netmangle'`.
 *
 *     await using lab = await Lab.up();                       // h1 ── sw ── h2, in namespaces
 *     await using fault = await attach('tcp.flags.push => delay 2ms',
 *       { dev: 'eth0', hook: 'egress', netns: lab.netns('h1') }, { first: 1, perConnection: true });
 *     // … traffic …
 *     fault.counters().rules[0].acted;
 *
 * Everything here is what the CLI itself runs on; docs/api.md is the guide. Errors a caller can
 * act on are NetmangleError (UsageError for bad input, exit code 2) with a one-line message and
 * an optional hint; anything else is a bug in netmangle.
 *
 * Not here yet: a stream of per-packet events (`fault.events()`), which comes with tracing.
 */
import { compileGroup, type CompiledProgram } from '../compiler/index.js';
import { buildObjectFromGroups, type SectionStyle } from '../elf/build.js';
import { UsageError } from '../errors.js';
import { probeFeaturesCached, type ProbeResult } from '../kernel/probe.js';
import { lookupField } from '../rules/catalog.js';
import type { Hook } from '../rules/ast.js';
import { replayCapture, selectGroups, type ReplaySummary } from '../replay/index.js';
import type { CaptureFileFormat } from '../replay/capture-io.js';
import type { ReplayEngine } from '../replay/runner.js';
import { resolveRules, type RuleInput, type RuleSet, type Target, type Triggers } from './rules.js';

export { attach } from './fault.js';
export type { AttachOptions, AttachSettings, AttachmentInfo, DelayLineCounts, Fault, FaultCounters, RuleCounts } from './fault.js';
export { parseRules } from './rules.js';
export type { RuleInput, RuleSet, Target, Triggers } from './rules.js';
export { loadRulesFile, loadRulesText } from '../rules/load.js';
export { NetmangleError, UsageError, NotFoundError, HookBusyError, ProgramRejectedError, describeError } from '../errors.js';
export { NotPrivilegedError } from '../kernel/probe.js';
export { RuleError } from '../rules/errors.js';
export { CompileError } from '../compiler/index.js';
export { Lab, withLab, LabExistsError } from '../lab/lab.js';
export type { TopologyInput, LabUpOptions, ExecOptions, InterfaceInfo } from '../lab/lab.js';
export { TopologyError } from '../lab/topology.js';
export type { TopologySpec, HostSpec, LinkSpec, EndSpec, TopologyPlan } from '../lab/topology.js';
export type { RunResult, RunOptions } from '../lab/run.js';
export { nstatSnapshot, nstatDelta } from '../lab/measure.js';
export type { Counters } from '../lab/measure.js';
export type { Hook, Rule, RuleGroup } from '../rules/ast.js';
export type { CompiledProgram } from '../compiler/index.js';
export type { DelayLineStats } from '../delay/stats.js';
export type { ReplaySummary, RuleSummary, HoldSummary } from '../replay/index.js';
export type { ReplayEngine } from '../replay/runner.js';
export type { CaptureFileFormat } from '../replay/capture-io.js';
export type { ProbeResult, ProbeFeatures } from '../kernel/probe.js';

/** Options of compile() and build(): the triggers of one-line rules and the seed. */
export interface CompileOptions extends Triggers {
  /** Seed of the random decisions, 0 to 2³²−1 (default: the rule set's, else random). */
  seed?: number;
}

/**
 * Compiles rules to eBPF instructions without loading them: one program per (namespace,
 * interface, hook), with the maps it needs and the seed used. Runs anywhere (no kernel, no root).
 *
 * @throws UsageError for a bad rule or option; CompileError for rules that need a delay line
 *   (`delay`, `reorder`: only attach() and replay() can hold packets).
 */
export function compile(rules: string | readonly string[], target: Target, options?: CompileOptions): CompiledProgram[];
export function compile(rules: RuleSet, target?: { netns?: string }, options?: { seed?: number }): CompiledProgram[];
export function compile(rules: RuleInput, target?: Target | { netns?: string }, options: CompileOptions = {}): CompiledProgram[] {
  const { seed, ...triggers } = options;
  const r = resolveRules(rules, target as Partial<Target> | undefined, triggers, seed);
  return r.groups.map((g) => compileGroup(g, { seed: r.seed, lookupField }));
}

/** Options of build(). */
export interface BuildOptions extends CompileOptions {
  /**
   * `tc` (default): tc programs in section `tc`, which libbpf 1.1 (iproute2 6.1, bpftool 7.1)
   * loads; `tcx`: sections `tcx/ingress` and `tcx/egress` (libbpf 1.3+).
   */
  sections?: SectionStyle;
}

/**
 * The rules as an ELF object (the bytes of a `.o` file) that the standard tools load:
 * `ip link set dev D xdp object F.o`, `tc filter add dev D ingress bpf da obj F.o sec tc`,
 * `bpftool prog load F.o PATH`. The seed is stored in the object. Runs anywhere.
 *
 * @throws UsageError for a bad rule or option; CompileError for `delay` and `reorder` rules.
 */
export function build(rules: string | readonly string[], target: Target, options?: BuildOptions): Uint8Array;
export function build(rules: RuleSet, target?: { netns?: string }, options?: { seed?: number; sections?: SectionStyle }): Uint8Array;
export function build(rules: RuleInput, target?: Target | { netns?: string }, options: BuildOptions = {}): Uint8Array {
  const { seed, sections, ...triggers } = options;
  if (sections !== undefined && sections !== 'tc' && sections !== 'tcx') throw new UsageError(`sections ${JSON.stringify(sections)}: must be tc or tcx`);
  const r = resolveRules(rules, target as Partial<Target> | undefined, triggers, seed);
  return buildObjectFromGroups(r.groups, r.seed, { sections }).bytes;
}

/** What replay() reads and writes, and how. */
export interface ReplayOptions extends CompileOptions {
  /** The rules: one-line rules (with `hook`) or a rule set. */
  rules: RuleInput;
  /** For one-line rules: the hook they run at (the interface name does not matter offline). */
  hook?: Hook;
  /** Capture to read: pcap or pcapng. */
  input: string;
  /** Capture to write (pcapng when the name ends in .pcapng, else pcap, unless `format` says). */
  output: string;
  format?: CaptureFileFormat;
  /** `jit` (default: the user-space eBPF VM compiled to JavaScript), `interp` (the VM's interpreter) or `kernel` (BPF_PROG_TEST_RUN, root). */
  engine?: ReplayEngine;
  /** Comment changed packets in a pcapng output (default true). */
  comments?: boolean;
  /** Most packets and bytes each hold queue (delay, reorder) keeps at once. */
  maxHeld?: { packets: number; bytes: number };
  /** Called every few thousand packets and at the end. */
  onProgress?: (bytesRead: number, packets: number) => void;
}

/**
 * Replays a capture through the rules offline, as the programs would treat the packets at
 * their hooks (delays and reorders by the capture's clock), and writes what leaves. Needs no
 * kernel except with `engine: 'kernel'`.
 *
 * @returns Per-rule counts (seen, matched, acted, changed, dropped) and totals.
 * @throws UsageError for a bad rule, option, or unreadable capture.
 */
export async function replay(options: ReplayOptions): Promise<ReplaySummary> {
  const { rules, hook, input, output, format, engine, comments, maxHeld, onProgress, seed, ...triggers } = options;
  const target = typeof rules === 'string' || Array.isArray(rules) ? { dev: 'replay', hook: hook as Hook } : undefined;
  if (target && hook === undefined) throw new UsageError('one-line rules to replay need hook: xdp, ingress or egress');
  const r = resolveRules(rules, target, triggers, seed);
  const groups = selectGroups(r.groups, target || hook === undefined ? {} : { hook });
  return replayCapture({ groups, seed: r.seed, engine: engine ?? 'jit', input, output, format, comments, maxHeld, onProgress });
}

/**
 * What this kernel can do (bpf syscall, JIT, BTF, XDP and tcx links, test runs, ring buffers…),
 * each feature found by a tiny syscall that uses it in a fresh namespace, and how attach() will
 * attach at each hook. Remembered for this boot in /run/netmangle/probe.json.
 *
 * @throws NotPrivilegedError without root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
 */
export function probe(): ProbeResult {
  return probeFeaturesCached();
}
