/**
 * Shared steps of the compiler's kernel tests: rule text to a checked Rule, a group compiled
 * and loaded into the kernel, one BPF_PROG_TEST_RUN per packet.
 */
import koffi from 'koffi';
import { compileGroup, type CompiledProgram } from '../../src/compiler/index.js';
import { testRun } from '../../src/kernel/index.js';
import { loadCompiled, type LoadedProgram } from '../../src/live/index.js';
import type { Hook, Rule } from '../../src/rules/ast.js';
import { lookupField } from '../../src/rules/catalog.js';
import { checkRule } from '../../src/rules/check.js';
import { parseRuleText } from '../../src/rules/parser.js';

export const XDP_DROP = 1;
export const XDP_PASS = 2;
export const TC_ACT_UNSPEC = -1;
export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;

/** What the compiled program returns at a hook when no rule decided, for `pass` (the next program on the hook decides), for `drop`. */
export function verdictsAt(hook: Hook): { none: number; pass: number; drop: number } {
  return hook === 'xdp' ? { none: XDP_PASS, pass: XDP_PASS, drop: XDP_DROP } : { none: TC_ACT_UNSPEC, pass: TC_ACT_UNSPEC, drop: TC_ACT_SHOT };
}

export type RuleOptions = Partial<Pick<Rule, 'probability' | 'every' | 'checksum' | 'name'>>;

/** One rule from its one-line text, checked for the hook. */
export function rule(text: string, hook: Hook, opts: RuleOptions = {}): Rule {
  const checked = checkRule(parseRuleText(text), text, hook);
  const r: Rule = { name: opts.name ?? 'rule-1', text, match: checked.match, actions: checked.actions, checksum: opts.checksum ?? 'fix' };
  if (opts.probability !== undefined) r.probability = opts.probability;
  if (opts.every !== undefined) r.every = opts.every;
  return r;
}

export function compileRules(hook: Hook, rules: Rule[], seed = 1): CompiledProgram {
  return compileGroup({ dev: 'x', hook, rules }, { seed, lookupField });
}

/** Loads the rules (one text or several) at a hook, runs fn, always unloads. */
export function withRules<T>(hook: Hook, rules: string | Array<string | Rule> | Rule, fn: (p: LoadedProgram) => T, opts: RuleOptions & { seed?: number } = {}): T {
  const list = (Array.isArray(rules) ? rules : [rules]).map((r, i) => (typeof r === 'string' ? rule(r, hook, { ...opts, name: `rule-${i + 1}` }) : r));
  const loaded = loadCompiled(compileRules(hook, list, opts.seed ?? 1));
  try {
    return fn(loaded);
  } finally {
    loaded.close();
  }
}

export interface RunResult {
  retval: number;
  data: Uint8Array;
}

export function run(p: LoadedProgram, frame: Uint8Array): RunResult {
  const r = testRun(p.prog, { data: frame });
  return { retval: r.retval, data: r.data };
}

// ------------------------------------------------------------------ CPU pinning

// Per-CPU PRNG state means a run's draws depend on the CPU it runs on; tests that compare
// draw sequences pin the calling thread (BPF_PROG_TEST_RUN runs on the caller's CPU).
let affinity: { get: (pid: number, size: number, mask: Buffer) => number; set: (pid: number, size: number, mask: Buffer) => number } | undefined;

function affinityCalls() {
  if (!affinity) {
    const libc = koffi.load('libc.so.6');
    affinity = {
      get: libc.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)'),
      set: libc.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)'),
    };
  }
  return affinity;
}

/** Runs fn with the calling thread pinned to one CPU, then restores the previous CPU set. */
export function onCpu<T>(cpu: number, fn: () => T): T {
  const calls = affinityCalls();
  const saved = Buffer.alloc(128);
  if (calls.get(0, saved.length, saved) < 0) throw new Error('sched_getaffinity failed');
  const mask = Buffer.alloc(128);
  mask[cpu >> 3] = 1 << (cpu & 7);
  if (calls.set(0, mask.length, mask) !== 0) throw new Error(`sched_setaffinity to CPU ${cpu} failed`);
  try {
    return fn();
  } finally {
    calls.set(0, saved.length, saved);
  }
}
