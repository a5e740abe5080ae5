/**
 * A small mutation fuzzer for netmangle's input readers: a seeded PRNG, byte and text mutators
 * over a corpus of valid inputs, a time budget, and the oracle every target shares: an input
 * is either accepted, or refused with a NetmangleError whose message is short and has no stack
 * trace. Anything else is a finding; the input is written out to become a regression fixture
 * (test/fixtures/fuzz/<target>/), which every run replays before fuzzing.
 *
 * Budget: NETMANGLE_FUZZ_SECONDS is the time of all targets together (default 180 under
 * CI=true, 20 otherwise), shared by weight; NETMANGLE_FUZZ_SEED picks the sequence (default
 * 22). Input number N of a target is the same for a seed on every machine, so a finding is
 * reproducible from the seed and N, which the failure message gives.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetmangleError } from '../../src/errors.js';
import { inCI } from '../helpers/kernel.js';

export const FUZZ_SEED = Number(process.env.NETMANGLE_FUZZ_SEED ?? 22);
const TOTAL_SECONDS = Number(process.env.NETMANGLE_FUZZ_SECONDS ?? (inCI ? 180 : 20));

/** Shares of the total budget, by target. */
const WEIGHTS: Record<string, number> = { rules: 0.2, 'rules-file': 0.15, pcap: 0.15, elf: 0.15, compiler: 0.35 };

/** Milliseconds target `name` may fuzz for. */
export function budgetMs(name: string): number {
  return Math.max(0, TOTAL_SECONDS * 1000 * (WEIGHTS[name] ?? 0.1));
}

export const repoPath = (p: string): string => fileURLToPath(new URL(`../../../${p}`, import.meta.url));

// ------------------------------------------------------------------ PRNG

/** splitmix32: small, fast, and the same sequence everywhere for a seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x9e3779b9) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }
  /** 0 ≤ n < max */
  below(max: number): number {
    return max <= 1 ? 0 : this.next() % max;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }
}

/** The PRNG of input `n` of a target: each input's randomness depends only on (seed, target, n). */
export function rngFor(target: string, n: number): Rng {
  let h = FUZZ_SEED >>> 0;
  for (const c of target) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return new Rng((h ^ Math.imul(n + 1, 0x9e3779b1)) >>> 0);
}

// ------------------------------------------------------------------ mutators

const INTERESTING = [0, 1, 2, 7, 8, 9, 15, 16, 23, 24, 31, 32, 63, 64, 127, 128, 255, 256, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];

/** One to a few random edits of a byte string; `others` are spliced from. */
export function mutateBytes(rng: Rng, input: Uint8Array, others: readonly Uint8Array[] = []): Uint8Array {
  let b: Uint8Array = Uint8Array.from(input);
  const edits = 1 + rng.below(rng.chance(0.2) ? 16 : 4);
  for (let e = 0; e < edits; e++) {
    const at = rng.below(Math.max(1, b.length));
    switch (rng.below(9)) {
      case 0: // flip a bit
        if (b.length > 0) b[at] = b[at]! ^ (1 << rng.below(8));
        break;
      case 1: // a random byte
        if (b.length > 0) b[at] = rng.below(256);
        break;
      case 2: case 3: { // an interesting little-endian number, 1, 2, 4 or 8 bytes wide
        const width = rng.pick([1, 2, 4, 8]);
        const v = rng.chance(0.2) ? Math.max(0, b.length - rng.below(64)) : rng.pick(INTERESTING);
        for (let i = 0; i < width && at + i < b.length; i++) b[at + i] = i < 4 ? (v >>> (8 * i)) & 0xff : 0;
        break;
      }
      case 4: // cut the end
        b = b.subarray(0, rng.below(b.length + 1));
        break;
      case 5: { // delete a chunk
        const len = rng.below(Math.min(64, b.length - at) + 1);
        b = concat(b.subarray(0, at), b.subarray(at + len));
        break;
      }
      case 6: { // duplicate a chunk
        const len = rng.below(Math.min(256, b.length - at) + 1);
        b = concat(b.subarray(0, at + len), b.subarray(at, at + len), b.subarray(at + len));
        break;
      }
      case 7: { // random bytes inserted
        const junk = Uint8Array.from({ length: 1 + rng.below(16) }, () => rng.below(256));
        b = concat(b.subarray(0, at), junk, b.subarray(at));
        break;
      }
      case 8: { // splice a chunk of another input over this one
        if (others.length === 0) break;
        const o = rng.pick(others);
        const from = rng.below(o.length);
        const chunk = o.subarray(from, from + 1 + rng.below(128));
        b = concat(b.subarray(0, at), chunk, b.subarray(Math.min(b.length, at + chunk.length)));
        break;
      }
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let p = 0;
  for (const part of parts) {
    out.set(part, p);
    p += part.length;
  }
  return out;
}

/** Pieces of the rule language, inserted whole so mutants stay close to rules. */
const RULE_TOKENS = [
  ' and ', ' or ', ' not ', '!', '(', ')', '{', '}', ',', '..', ' in ', ' == ', ' != ', ' < ', ' >= ', ' => ', ' = ', '+', '-', '*', '/', '%',
  '&', '|', '^', '<<', '>>', '~', '0', '1', '255', '65535', '4294967295', '4294967296', '0x', '0xff', '07', '198.18.0.1', '198.18.0.0/15',
  '2001:db8::1', '::', '::ffff:1.2.3.4', '2001:db8::/129', '02:00:00:00:00:01', 'ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6', 'eth', 'vlan', 'frame',
  'ip.ttl', 'ip.src', 'ip.addr', 'ip.hdr_len', 'ip.len', 'ipv6.plen', 'tcp.port', 'tcp.flags.syn', 'tcp.len', 'udp.length', 'frame.len', 'vlan.id',
  'tcp.checksum', 'random(', 'min(', 'max(', 'drop', 'pass', 'set ', 'duplicate', 'duplicate 16', 'corrupt 64', 'truncate 14', 'truncate 65536',
  'reject', 'reject with tcp-reset', 'reject with admin-prohibited', 'delay 1s', 'delay 0ms', 'jitter 2s', 'distribution pareto', 'reorder by 1000',
  'timeout 0ms', '50us', '"', "'", '\t', '\n', '\u0000', '\u001b[31m', 'é', '#', ';',
];

/** One to a few edits of a rule's text, by characters and by whole tokens of the language. */
export function mutateText(rng: Rng, input: string, others: readonly string[] = []): string {
  let s = input;
  const edits = 1 + rng.below(4);
  for (let e = 0; e < edits; e++) {
    const at = rng.below(s.length + 1);
    switch (rng.below(10)) {
      case 0: case 1: case 2: // insert a token
        s = s.slice(0, at) + rng.pick(RULE_TOKENS) + s.slice(at);
        break;
      case 3: { // delete a span
        const len = 1 + rng.below(8);
        s = s.slice(0, at) + s.slice(at + len);
        break;
      }
      case 4: { // replace a span with a token
        const len = 1 + rng.below(6);
        s = s.slice(0, at) + rng.pick(RULE_TOKENS) + s.slice(at + len);
        break;
      }
      case 5: { // duplicate a span
        const len = 1 + rng.below(20);
        s = s.slice(0, at + len) + s.slice(at, at + len) + s.slice(at + len);
        break;
      }
      case 6: { // splice another input's match or actions
        if (others.length === 0) break;
        const o = rng.pick(others);
        const arrow = o.indexOf('=>');
        const part = rng.chance(0.5) ? o.slice(0, Math.max(0, arrow)) : o.slice(arrow + 2);
        s = rng.chance(0.5) ? `${s.slice(0, at)} and ${part}` : `${s.split('=>')[0]}=>${part}`;
        break;
      }
      case 7: // a random character
        s = s.slice(0, at) + String.fromCharCode(rng.below(128)) + s.slice(at);
        break;
      case 8: { // a digit run changed to an interesting number
        const m = /\d+/.exec(s.slice(at));
        if (m) s = s.slice(0, at + m.index) + String(rng.pick(INTERESTING) + rng.below(3) - 1) + s.slice(at + m.index + m[0].length);
        break;
      }
      case 9: { // something repeated many times: depth and length limits
        const unit = rng.pick(['(', 'not ', '!', ' or ip', ' + 1', 'a', '9', '1..', ', 1', 'min(1, ']);
        const n = rng.pick([10, 31, 32, 33, 100, 257, 1025, 3000]);
        s = s.slice(0, at) + unit.repeat(n) + s.slice(at);
        break;
      }
    }
  }
  return s;
}

// ------------------------------------------------------------------ oracle

/** Longest message a refusal may print: far more than any real one, far less than an echo of the input. */
export const MAX_MESSAGE = 2000;

/**
 * The outcome of one input, or a description of why it is a finding. Accepted inputs return
 * 'accepted'; refused ones must throw a NetmangleError with exit code `exitCodes`, a short
 * message, no stack and no "internal error".
 */
export function judge(err: unknown, exitCodes: readonly number[]): string | undefined {
  if (!(err instanceof NetmangleError)) {
    const what = err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err);
    return `not a NetmangleError: ${what.slice(0, 300)}${err instanceof Error && err.stack ? `\n${err.stack.split('\n').slice(1, 6).join('\n')}` : ''}`;
  }
  if (!exitCodes.includes(err.exitCode)) return `exit code ${err.exitCode}, not ${exitCodes.join(' or ')}: ${err.message.slice(0, 200)}`;
  const text = err.hint ? `${err.message}\n  ${err.hint}` : err.message;
  if (text.length > MAX_MESSAGE) return `a message of ${text.length} characters: ${text.slice(0, 200)}…`;
  if (/internal error|\n\s+at \S+ \(/.test(text)) return `an internal error or a stack in the message: ${text.slice(0, 300)}`;
  return undefined;
}

export interface Target<T> {
  /** Directory under test/fixtures/fuzz/ with its regression fixtures, and the budget key. */
  name: string;
  corpus: readonly T[];
  mutate(rng: Rng, input: T, corpus: readonly T[]): T;
  /** Runs one input; returns a finding, or undefined. */
  check(input: T): string | undefined | Promise<string | undefined>;
  encode(input: T): Uint8Array;
  decode(bytes: Uint8Array): T;
  /** File extension of saved inputs. */
  ext: string;
}

export interface FuzzReport {
  fixtures: number;
  inputs: number;
  findings: string[];
}

/** Replays the target's fixtures, then fuzzes for its budget; a finding's input is saved. */
export async function fuzz<T>(target: Target<T>, opts: { budgetMs?: number; maxFindings?: number } = {}): Promise<FuzzReport> {
  const findings: string[] = [];
  // A warning Node prints (a library's process.emitWarning) is output the user did not ask for.
  const warnings: string[] = [];
  const onWarning = (w: Error): void => {
    warnings.push(`${w.name}: ${w.message}`.slice(0, 200));
  };
  process.on('warning', onWarning);
  try {
    return await fuzzWith(target, opts, findings, warnings);
  } finally {
    process.off('warning', onWarning);
  }
}

async function fuzzWith<T>(target: Target<T>, opts: { budgetMs?: number; maxFindings?: number }, findings: string[], warnings: string[]): Promise<FuzzReport> {
  const checked = async (input: T): Promise<string | undefined> => {
    const why = await target.check(input);
    // Warnings are emitted on the next tick: let them arrive before judging the input.
    await new Promise((resolve) => setImmediate(resolve));
    const w = warnings.splice(0);
    return why ?? (w.length > 0 ? `printed a warning: ${w[0]}` : undefined);
  };
  const dir = repoPath(`test/fixtures/fuzz/${target.name}`);
  let fixtures = 0;
  for (const f of listFixtures(dir)) {
    fixtures++;
    const why = await checked(target.decode(readFileSync(join(dir, f))));
    if (why) findings.push(`fixture ${target.name}/${f}: ${why}`);
  }
  const deadline = Date.now() + (opts.budgetMs ?? budgetMs(target.name));
  const current = join(outDir(), `${target.name}-current.${target.ext}`);
  let n = 0;
  for (; Date.now() < deadline && findings.length < (opts.maxFindings ?? 5); n++) {
    const rng = rngFor(target.name, n);
    let input = rng.pick(target.corpus);
    // Mutants of mutants reach further from the corpus.
    for (let depth = 1 + rng.below(3); depth > 0; depth--) input = target.mutate(rng, input, target.corpus);
    // An input that hangs never returns to be saved: the one being tried is always on disk.
    writeFileSync(current, target.encode(input));
    const why = await checked(input);
    if (why) findings.push(`${save(target, input, n)}: ${why}`);
  }
  return { fixtures, inputs: n, findings };
}

function listFixtures(dir: string): string[] {
  try {
    return readdirSync(dir).filter((f) => !f.startsWith('.') && !f.endsWith('.md')).sort();
  } catch {
    return [];
  }
}

function outDir(): string {
  const out = process.env.NETMANGLE_FUZZ_OUT ?? join(tmpdir(), 'netmangle-fuzz');
  mkdirSync(out, { recursive: true });
  return out;
}

/** Test options: the budget plus time for the fixtures, after which a hang fails the test. */
export function fuzzTestOptions(name: string): { timeout: number } {
  return { timeout: budgetMs(name) + 120_000 };
}

function save<T>(target: Target<T>, input: T, n: number): string {
  const out = outDir();
  const file = join(out, `${target.name}-seed${FUZZ_SEED}-${n}.${target.ext}`);
  writeFileSync(file, target.encode(input));
  return `seed ${FUZZ_SEED} input ${n} (saved as ${file}; copy it into test/fixtures/fuzz/${target.name}/ once fixed)`;
}

/** Fails the test with every finding, or passes saying how much was tried. */
export function assertNoFindings(report: FuzzReport, t: { diagnostic(msg: string): void }): void {
  t.diagnostic(`${report.fixtures} fixtures replayed, ${report.inputs} inputs fuzzed (seed ${FUZZ_SEED})`);
  assert.ok(report.fixtures + report.inputs > 0, 'the fuzzer ran no input at all');
  assert.deepEqual(report.findings, [], `${report.findings.length} findings:\n${report.findings.join('\n')}`);
}

export const textCodec = {
  encode: (s: string): Uint8Array => new TextEncoder().encode(s),
  decode: (b: Uint8Array): string => new TextDecoder().decode(b),
};

/**
 * A new rule from the parts of valid ones: the match of one (or two joined with and/or/not)
 * and the actions of one or two others. Most such rules are valid, so the compiler fuzzer
 * reaches the kernel far more often than with character edits alone.
 */
export function recombineRule(rng: Rng, corpus: readonly string[]): string {
  const matchOf = (r: string): string => r.slice(0, Math.max(0, r.indexOf('=>'))).trim();
  const actionsOf = (r: string): string[] => r.slice(r.indexOf('=>') + 2).split(',').map((a) => a.trim()).filter((a) => a !== '');
  let match = matchOf(rng.pick(corpus));
  if (rng.chance(0.4)) {
    const other = matchOf(rng.pick(corpus));
    if (match !== '' && other !== '') match = `(${match}) ${rng.pick(['and', 'or', 'and not'])} (${other})`;
  }
  const actions = [...actionsOf(rng.pick(corpus))];
  if (rng.chance(0.4)) actions.unshift(...actionsOf(rng.pick(corpus)).filter((a) => !/^(drop|pass|reject)/.test(a)));
  return `${match} => ${actions.join(', ')}`;
}
