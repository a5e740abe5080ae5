/**
 * `delay` and `reorder` offline: what replay puts in place of the live delay line. A rule that
 * holds packets ends in bpf_redirect to its hold spec's device; replay compiles the group with a
 * stand-in ifindex per spec (and one for the followers of `reorder`), reads the target back from
 * the run (the VM's redirect record; for the kernel, which rule acted), and holds the packet in
 * a HoldQueue driven by the capture's timestamps. The queue's random draws (jitter) come from a
 * seed derived from --seed, so a seed repeats a replay byte for byte.
 */
import { delayedMark } from '../compiler/layout.js';
import type { HoldTargets } from '../compiler/codegen.js';
import { connKeyOf } from '../delay/flow.js';
import { uncountHeld, type HeldCounts } from '../delay/held.js';
import { DEFAULT_HOLD_LIMITS, HoldQueue, seededRandom, type HoldLimits, type HoldSpec, type Release } from '../delay/queue.js';
import type { RuleGroup } from '../rules/ast.js';
import type { ProgramRunner } from './runner.js';

/** Stand-in ifindex of hold spec i is HOLD_IFINDEX_BASE + i; followers go to FOLLOWER_IFINDEX. */
export const HOLD_IFINDEX_BASE = 0x7e000000;
export const FOLLOWER_IFINDEX = 0x7e0000ff;

/** bpf_redirect's verdicts: XDP_REDIRECT, TC_ACT_REDIRECT. */
const XDP_REDIRECT = 4;
const TC_ACT_REDIRECT = 7;

/** live/index.ts holdPlan's answer (imported there lazily: that module loads the kernel's bindings). */
export interface HoldPlan {
  specs: HoldSpec[];
  ruleSpec: Map<number, number>;
}

/** Whether some rule of the group holds packets. */
export const groupHolds = (group: RuleGroup): boolean => group.rules.some((r) => r.actions.some((a) => a.kind === 'delay' || a.kind === 'reorder'));

/** A packet a stage holds, with what its output line needs when it leaves. */
export interface HeldPacket {
  /** The frame as the holding stage left it (a copy). */
  frame: Uint8Array;
  /** The input frame (a copy), to tell whether the packet left changed. */
  original: Uint8Array;
  /** The input's wire length minus its captured length. */
  wireExtra: number;
  /** Rules of earlier stages and of the holding stage that acted on it, as (stage, rule) pairs. */
  acted: number[];
  /** Comment parts so far (holds of earlier stages). */
  notes: string[];
  /** The holding rule's index in its group. */
  rule: number;
  /** Reorder: the connection key (hex), as given to the queue. */
  flow?: string;
}

/** Per-rule hold counters of one stage. */
export interface RuleHoldCounts {
  delayed: Float64Array;
  reordered: Float64Array;
  overLimit: Float64Array;
}

/** What to do with a packet a stage redirected. */
export type HoldTarget = { spec: number } | 'follower' | undefined;

/** The hold side of one stage (a group with `delay` or `reorder` rules). */
export class StageHold {
  readonly queue: HoldQueue<HeldPacket>;
  readonly specs: HoldSpec[];
  readonly ruleSpec: Map<number, number>;
  readonly counts: RuleHoldCounts;
  private readonly rejects: boolean[];
  private heldMap: HeldCounts | undefined;

  private constructor(group: RuleGroup, plan: HoldPlan, seed: number, limits: HoldLimits) {
    this.specs = plan.specs;
    this.ruleSpec = plan.ruleSpec;
    this.queue = new HoldQueue<HeldPacket>(limits, seededRandom(seed));
    const n = group.rules.length;
    this.counts = { delayed: new Float64Array(n), reordered: new Float64Array(n), overLimit: new Float64Array(n) };
    this.rejects = group.rules.map((r) => r.actions.some((a) => a.kind === 'reject'));
  }

  /** The group's hold side, or undefined when none of its rules holds packets. */
  static of(group: RuleGroup, plan: HoldPlan, seed: number, limits: HoldLimits = DEFAULT_HOLD_LIMITS): StageHold | undefined {
    return plan.specs.length > 0 ? new StageHold(group, plan, seed, limits) : undefined;
  }

  /** What compileGroup needs: the stand-in devices. */
  get targets(): HoldTargets {
    return {
      rule: new Map([...this.ruleSpec].map(([rule, spec]) => [rule, HOLD_IFINDEX_BASE + spec] as const)),
      follower: this.specs.some((s) => s.kind === 'reorder') ? FOLLOWER_IFINDEX : undefined,
      // Nothing comes back offline; any line's mark will do.
      mark: delayedMark(0),
    };
  }

  /** The program's HELD_MAP (in the VM or the kernel), where leaving reorder packets are taken off. */
  useHeldMap(map: HeldCounts | undefined): void {
    this.heldMap = map;
  }

  /**
   * Where a run sent the packet: a hold spec, the followers' device, or neither (not a
   * redirect, or `reject`'s). `lastActed`: the highest rule index that acted in the run, -1 for none.
   */
  targetOf(runner: ProgramRunner, retval: number, lastActed: number): HoldTarget {
    if (retval !== (runner.compiled.kind === 'xdp' ? XDP_REDIRECT : TC_ACT_REDIRECT)) return undefined;
    const ifindex = runner.redirectIfindex;
    if (ifindex !== undefined) {
      if (ifindex === FOLLOWER_IFINDEX) return 'follower';
      const spec = ifindex - HOLD_IFINDEX_BASE;
      return spec >= 0 && spec < this.specs.length ? { spec } : undefined;
    }
    // The kernel's test run keeps no redirect target: a holding rule ends the program, so the
    // last rule that acted tells. A redirect after no holding rule is the followers' (or reject's).
    const spec = lastActed >= 0 ? this.ruleSpec.get(lastActed) : undefined;
    if (spec !== undefined) return { spec };
    if (lastActed >= 0 && this.rejects[lastActed]) return undefined;
    return this.targets.follower !== undefined ? 'follower' : undefined;
  }

  /** The connection key of a frame, as hex (the queue's `flow`). */
  flowOf(frame: Uint8Array): string {
    return connKeyOf(frame).toString('hex');
  }

  /** A reorder packet left the line (any way): its connection's HELD_MAP count goes down by one. */
  left(spec: HoldSpec, flow: string | undefined): void {
    if (spec.kind !== 'reorder' || flow === undefined || !this.heldMap) return;
    uncountHeld(this.heldMap, Buffer.from(flow, 'hex'));
  }
}

/** A duration in the unit that writes it shortest: 50ms, 1.5s, 200us. */
export function formatDurationNs(ns: number): string {
  if (ns >= 1e9 && ns % 1e8 === 0) return `${ns / 1e9}s`;
  if (ns >= 1e6 && ns % 1e3 === 0) return `${ns / 1e6}ms`;
  if (ns >= 1e3 && ns % 1 === 0) return `${ns / 1e3}us`;
  return `${ns}ns`;
}

/** The comment of a packet leaving a hold: "rule-2: delayed 50.000 ms" and the like. */
export function holdNote(rule: string, r: Release<HeldPacket>, how: 'due' | 'overtaken'): string {
  if (r.spec.kind === 'delay') return `${rule}: delayed ${((r.releaseNs - r.arrivedNs) / 1e6).toFixed(3)} ms`;
  if (how === 'overtaken') return `${rule}: reordered: overtaken by ${r.spec.by} packet${r.spec.by === 1 ? '' : 's'}`;
  return `${rule}: reordered: released by its ${formatDurationNs(r.spec.timeoutNs)} timeout`;
}

/** The comment of a packet a full line let through at once. */
export function overLimitNote(rule: string, spec: HoldSpec): string {
  return `${rule}: not ${spec.kind === 'delay' ? 'delayed' : 'reordered'}: over the hold limit`;
}

/** The seed of a stage's queue: derived from --seed, apart from the program's PRNG seeding. */
export function holdSeed(seed: number, stage: number): number {
  return (Math.imul((seed ^ 0x5bd1e995) >>> 0, 0x9e3779b1) + stage) >>> 0;
}
