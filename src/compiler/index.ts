/**
 * The compiler's public face: a RuleGroup (rules sharing one interface and hook) becomes one
 * CompiledProgram, ready for the kernel (src/kernel), the VM (src/vm) or an ELF object.
 */
import type { Insn } from '../bpf/insn.js';
import { AsmError, type MapRef } from '../bpf/asm.js';
import { slotCount } from '../bpf/insn.js';
import { connectionMapBytes, DEFAULT_CONNECTIONS, formatBytes, type Hook, type RuleGroup } from '../rules/ast.js';
import { CompileError, generate, type FieldLookup, type HoldTargets } from './codegen.js';
import { CONN_KEY_SIZE, EVERY_MAP, MAX_PROGRAM_INSNS, MAX_RULES, HELD_CONNECTIONS, HELD_MAP, TIME_MAP, TIME_RULE_SIZE, STATE_MAP, CONN_MAP, CONN_ZERO_MAP, connCountOffset, STATE_PRNG, progKindOf, ruleCounterOffset, stateValueSize, STATE_GSO, type ProgKind } from './layout.js';
import { seedState } from './prng.js';

export { CompileError, type HoldTargets } from './codegen.js';
export * from './layout.js';
export * from './prng.js';

export interface MapSpec {
  name: string;
  /** lru_hash: the per-connection counts (layout.ts CONN_KEY); the others have one entry, key 4 bytes. */
  type: 'array' | 'percpu_array' | 'lru_hash' | 'hash';
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export interface CompiledProgram {
  hook: Hook;
  kind: ProgKind;
  dev: string;
  netns?: string;
  /** Program name for the kernel (at most 15 characters). */
  name: string;
  rules: Array<{ name: string; text: string }>;
  insns: Insn[];
  mapRefs: MapRef[];
  /** The code generator's label names to instruction indices (rule<i> marks where rule i starts). */
  labels?: ReadonlyMap<string, number>;
  maps: MapSpec[];
  seed: number;
  /** The state map's initial value for one CPU: the PRNG seeded, counters zero. */
  initialState(cpu: number): Uint8Array;
}

export interface CompileOptions {
  seed: number;
  lookupField: FieldLookup;
  /** Seed the PRNG from a `.rodata` global on first use (objects for libbpf-based loaders). */
  selfSeed?: boolean;
  /** The delay line's devices (required by rules with `delay` or `reorder`). */
  hold?: HoldTargets;
}

const SPLIT_HINT = 'split the rules across hooks or interfaces, or merge rules that differ only in a value into one with FIELD in {…}';

export function compileGroup(group: RuleGroup, opts: CompileOptions): CompiledProgram {
  const where = `${group.hook}${group.dev ? ` of ${group.dev}` : ''}`;
  if (group.rules.length > MAX_RULES) {
    throw new CompileError(`${group.rules.length} rules at ${where}: one program holds at most ${MAX_RULES} rules (their counters fill the largest per-CPU map value the kernel allows, 32 KB)`, {
      hint: SPLIT_HINT, exitCode: 2,
    });
  }
  const { asm, usesEvery, connRules, usesTime, usesHeld } = generate(group, { lookupField: opts.lookupField, selfSeed: opts.selfSeed, hold: opts.hold });
  let assembled;
  try {
    assembled = asm.assemble();
  } catch (err) {
    // The code generator keeps its jumps short; one that is not is too long a program.
    if (!(err instanceof AsmError)) throw err;
    throw new CompileError(`the ${group.rules.length} rules at ${where} make a program too long to assemble: ${err.message}`, { hint: SPLIT_HINT, exitCode: 2, cause: err });
  }
  const { insns, mapRefs, labels } = assembled;
  const slots = slotCount(insns);
  if (slots > MAX_PROGRAM_INSNS) {
    throw new CompileError(`the ${group.rules.length} rules at ${where} make a program of ${slots.toLocaleString('en-US')} instructions; the kernel loads at most ${MAX_PROGRAM_INSNS.toLocaleString('en-US')}`, { hint: SPLIT_HINT, exitCode: 2 });
  }
  const valueSize = stateValueSize(group.rules.length);
  const maps: MapSpec[] = [{ name: STATE_MAP, type: 'percpu_array', keySize: 4, valueSize, maxEntries: 1 }];
  if (usesEvery) maps.push({ name: EVERY_MAP, type: 'array', keySize: 4, valueSize: 8 * group.rules.length, maxEntries: 1 });
  if (usesTime) maps.push({ name: TIME_MAP, type: 'array', keySize: 4, valueSize: TIME_RULE_SIZE * group.rules.length, maxEntries: 1 });
  // By time, entries are never taken out: an LRU map lets the oldest deadlines go.
  if (usesHeld) maps.push({ name: HELD_MAP, type: opts.hold?.heldBy === 'time' ? 'lru_hash' : 'hash', keySize: CONN_KEY_SIZE, valueSize: 8, maxEntries: HELD_CONNECTIONS });
  if (connRules.length > 0) {
    const entries = Math.max(...connRules.map((i) => group.rules[i]!.connections ?? DEFAULT_CONNECTIONS));
    const valueSize = connCountOffset(connRules.length);
    maps.push({ name: CONN_MAP, type: 'lru_hash', keySize: CONN_KEY_SIZE, valueSize, maxEntries: entries });
    maps.push({ name: CONN_ZERO_MAP, type: 'array', keySize: 4, valueSize, maxEntries: 1 });
  }
  return {
    hook: group.hook,
    kind: progKindOf(group.hook),
    dev: group.dev,
    netns: group.netns,
    name: `nm_${group.hook}`,
    rules: group.rules.map((r) => ({ name: r.name, text: r.text })),
    insns,
    mapRefs,
    labels,
    maps,
    seed: opts.seed,
    initialState(cpu: number): Uint8Array {
      const v = new Uint8Array(valueSize);
      new DataView(v.buffer).setBigUint64(STATE_PRNG, seedState(BigInt(opts.seed) + (BigInt(cpu) << 32n)), true);
      return v;
    },
  };
}

export interface RuleCounters {
  matched: number;
  acted: number;
  dropped: number;
}

/** Per-rule counters summed over the per-CPU state values, and the GSO packets seen. */
export function readCounters(rules: number, perCpuValues: Uint8Array[]): { rules: RuleCounters[]; gso: number } {
  const out: RuleCounters[] = Array.from({ length: rules }, () => ({ matched: 0, acted: 0, dropped: 0 }));
  let gso = 0;
  for (const v of perCpuValues) {
    const dv = new DataView(v.buffer, v.byteOffset, v.byteLength);
    gso += Number(dv.getBigUint64(STATE_GSO, true));
    for (let i = 0; i < rules; i++) {
      out[i]!.matched += Number(dv.getBigUint64(ruleCounterOffset(i, 'matched'), true));
      out[i]!.acted += Number(dv.getBigUint64(ruleCounterOffset(i, 'acted'), true));
      out[i]!.dropped += Number(dv.getBigUint64(ruleCounterOffset(i, 'dropped'), true));
    }
  }
  return { rules: out, gso };
}

/** A per-connection map this large is said when it is made: it is kernel memory, locked. */
export const LARGE_MAP_BYTES = 64e6;

/**
 * The kernel memory the program's per-connection map locks (CONN_MAP, an LRU hash map that
 * allocates every entry up front), or undefined when it has none.
 */
export function connectionMapBytesOf(compiled: CompiledProgram): number | undefined {
  const m = compiled.maps.find((x) => x.name === CONN_MAP);
  return m ? connectionMapBytes(m.maxEntries, m.valueSize / 8) : undefined;
}

/** One line about a large per-connection map ("… locks about 117 MB of kernel memory"), or undefined. */
export function connectionMemoryNote(compiled: CompiledProgram): string | undefined {
  const bytes = connectionMapBytesOf(compiled);
  const m = compiled.maps.find((x) => x.name === CONN_MAP);
  if (bytes === undefined || !m || bytes < LARGE_MAP_BYTES) return undefined;
  const rules = m.valueSize / 8;
  return `the per-connection map of ${compiled.hook}${compiled.dev ? ` of ${compiled.dev}` : ''} (${m.maxEntries} connections, ${rules} rule${rules === 1 ? '' : 's'}) locks about ${formatBytes(bytes)} of kernel memory`;
}

