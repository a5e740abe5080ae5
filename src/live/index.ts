/**
 * Compiled rules in the kernel: maps created and seeded, program loaded, attached to its hook,
 * counters read back, everything undone on detach. Either the whole set of groups ends up
 * attached or nothing stays behind.
 */
import { compileGroup, readCounters, STATE_MAP, type CompiledProgram, type RuleCounters } from '../compiler/index.js';
import { NetmangleError } from '../errors.js';
import { attachProgram, type Attachment, type AttachOptions } from '../kernel/attach.js';
import { guardedOwner, refuseHeldHook, refuseOrphanedHook } from './guardian.js';
import { createMap, type BpfMap, type Program } from '../kernel/index.js';
import { loadWithReport } from './load-report.js';
import { linkByName } from '../kernel/iface.js';
import { watchLink, type LinkWatch } from '../kernel/linkwatch.js';
import { ipCommand } from '../kernel/netns.js';
import { lookupField } from '../rules/catalog.js';
import type { RuleGroup } from '../rules/ast.js';
import { childProcess } from '../builtins.js';
import { HOLD_FOLLOWER_TAG } from '../compiler/layout.js';
import { startDelayLine, type DelayLineStats, type HoldLimits, type HoldSpec, type RunningDelayLine } from '../delay/index.js';

export interface LoadedProgram extends Disposable {
  compiled: CompiledProgram;
  prog: Program;
  maps: Record<string, BpfMap>;
  counters(): { rules: RuleCounters[]; gso: number };
  close(): void;
}

/** Creates the program's maps (the PRNG seeded on every CPU) and loads it. */
export function loadCompiled(compiled: CompiledProgram): LoadedProgram {
  const maps: Record<string, BpfMap> = {};
  const closeMaps = () => {
    for (const m of Object.values(maps)) m.close();
  };
  try {
    for (const spec of compiled.maps) {
      maps[spec.name] = createMap({ type: spec.type, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries, name: spec.name });
    }
    const state = maps[STATE_MAP]!;
    const value = Buffer.alloc(state.cpus * state.valueStride);
    for (let cpu = 0; cpu < state.cpus; cpu++) Buffer.from(compiled.initialState(cpu)).copy(value, cpu * state.valueStride);
    state.update(Buffer.alloc(4), value);
    const prog = loadWithReport(compiled, maps);
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      prog.close();
      closeMaps();
    };
    return {
      compiled,
      prog,
      maps,
      counters: () => readStateCounters(compiled.rules.length, state),
      close,
      [Symbol.dispose]: close,
    };
  } catch (err) {
    closeMaps();
    throw err;
  }
}

/** Per-rule counters from a state map (per-CPU values summed). */
export function readStateCounters(rules: number, state: BpfMap): { rules: RuleCounters[]; gso: number } {
  const raw = state.lookup(Buffer.alloc(4));
  if (!raw) return { rules: Array.from({ length: rules }, () => ({ matched: 0, acted: 0, dropped: 0 })), gso: 0 };
  const values: Uint8Array[] = [];
  for (let cpu = 0; cpu < state.cpus; cpu++) values.push(raw.subarray(cpu * state.valueStride, cpu * state.valueStride + state.valueSize));
  return readCounters(rules, values);
}

export interface AttachedGroup {
  loaded: LoadedProgram;
  attachment: Attachment;
  /** gso_max_segs to restore on detach (when --per-segment changed it). */
  restoreGsoMaxSegs?: number;
  /** The delay line of the group's `delay` and `reorder` rules, removed on detach. */
  delayLine?: RunningDelayLine;
}

export interface LiveOptions {
  seed: number;
  path?: 'auto' | 'link' | 'tcx' | 'netlink';
  /** At tc egress, set the device's gso_max_segs to 1 while attached. */
  perSegment?: boolean;
  /** Most packets and bytes a delay line holds at once (beyond: sent on undelayed, counted). */
  maxHeld?: HoldLimits;
  /**
   * Called if a delay line's thread stops by itself: its programs keep sending packets to TAPs
   * nobody reads, so the caller should detach. Without it the line prints one line to stderr.
   */
  onDelayLineFailure?: (message: string, group: RuleGroup) => void;
  /** netlink tc path: the cls_bpf filter's priority (default: after the filters already there). */
  priority?: number;
  /**
   * Whether a guardian process removes netlink attachments if this process dies (default
   * true; see guardian.ts). Off only for callers that keep them on purpose.
   */
  guard?: boolean;
}

export class LiveSession implements Disposable {
  private detached = false;
  private watches: LinkWatch[] = [];
  private tapWatches: LinkWatch[] = [];
  constructor(readonly groups: AttachedGroup[]) {}

  /**
   * Starts watching the groups' interfaces (and namespaces) for `gone()`, which reports one
   * that is gone already too.
   */
  watch(): void {
    if (this.watches.length > 0 || this.detached) return;
    for (const g of this.groups) {
      const a = g.attachment;
      this.watches.push(watchLink(a.dev, a.ifindex, a.netns));
    }
    // A delay line's TAP deleted by hand: its programs would send the held packets nowhere.
    for (const g of this.groups) {
      const tap = g.delayLine?.tap;
      if (tap) this.tapWatches.push(watchLink(`${tap.name} (the delay line's TAP)`, tap.ifindex, tap.netns));
    }
  }

  /** Why an interface the rules are attached to went away (deleted, moved, its namespace deleted), if one did. */
  gone(): string | undefined {
    for (const w of [...this.watches, ...this.tapWatches]) {
      const reason = w?.check();
      if (reason) return reason;
    }
    return undefined;
  }

  counters(): Array<{ group: AttachedGroup; rules: RuleCounters[]; gso: number; delay?: DelayLineStats }> {
    return this.groups.map((g) => ({ group: g, ...g.loaded.counters(), delay: g.delayLine?.stats() }));
  }

  /** Detaches every program, restores device settings, closes maps. Idempotent. */
  detach(): void {
    if (this.detached) return;
    this.detached = true;
    let first: unknown;
    for (const [i, g] of [...this.groups.entries()].reverse()) {
      // Each step on its own: one failing must not leave the others undone.
      const step = (fn: () => void): void => {
        try {
          fn();
        } catch (err) {
          first ??= err;
        }
      };
      let gone = false;
      step(() => (gone = this.watches[i]?.check() !== undefined));
      step(() => g.attachment.detach());
      // A device that is gone has no setting to restore.
      if (g.restoreGsoMaxSegs !== undefined && !gone) step(() => setGsoMaxSegs(g.attachment.dev, g.attachment.netns, g.restoreGsoMaxSegs!));
      // The line's thread stops before the maps it uses are closed.
      step(() => g.delayLine?.close());
      step(() => g.loaded.close());
      step(() => this.watches[i]?.close());
    }
    for (const w of this.tapWatches) w.close();
    if (first) throw first;
  }

  /**
   * Puts programs compiled from `groups` in place of the attached ones, each in one step on its
   * hook (BPF_LINK_UPDATE), so no packet meets neither the old rules nor the new. Possible when
   * the groups are for the same (namespace, interface, hook) set as the attached ones, all on
   * BPF links, and no rule old or new holds packets (a delay line's programs are bound to it);
   * otherwise returns false and changes nothing. The new programs count from zero.
   * @throws when compiling or loading the new programs fails (nothing changed then either).
   */
  replaceInPlace(groups: RuleGroup[], seed: number): boolean {
    if (this.detached || groups.length !== this.groups.length) return false;
    const keyOf = (g: { dev: string; hook: string; netns?: string }) => `${g.netns ?? ''}\0${g.dev}\0${g.hook}`;
    const byKey = new Map(this.groups.map((g) => [keyOf(g.attachment), g] as const));
    const pairs = groups.map((g) => ({ group: g, old: byKey.get(keyOf(g)) }));
    if (pairs.some((p) => !p.old || !p.old.attachment.link || p.old.delayLine || holdPlan(p.group).specs.length > 0)) return false;
    if (new Set(pairs.map((p) => p.old)).size !== pairs.length) return false;
    const loaded: LoadedProgram[] = [];
    try {
      for (const p of pairs) loaded.push(loadCompiled(compileGroup(p.group, { seed, lookupField })));
    } catch (err) {
      for (const l of loaded) l.close();
      throw err;
    }
    const done: number[] = [];
    try {
      pairs.forEach((p, i) => {
        p.old!.attachment.replace(loaded[i]!.prog, p.old!.loaded.prog);
        done.push(i);
      });
    } catch (err) {
      // Put back what was already replaced, so the session stays as it was.
      for (const i of done.reverse()) {
        try {
          pairs[i]!.old!.attachment.replace(pairs[i]!.old!.loaded.prog, loaded[i]!.prog);
        } catch {
          // The hook keeps the new program; closing our handle to it below does not detach it.
        }
      }
      for (const l of loaded) l.close();
      throw err;
    }
    pairs.forEach((p, i) => {
      p.old!.loaded.close();
      p.old!.loaded = loaded[i]!;
    });
    return true;
  }

  /**
   * Closes this process's handles but leaves every program attached: for pinned sets, whose
   * links and maps bpffs now holds (and netlink attachments, which hold themselves).
   */
  release(): void {
    if (this.detached) return;
    if (this.groups.some((g) => g.delayLine)) {
      throw new NetmangleError('delay and reorder rules cannot stay attached after exit: the delay line lives in this process', { hint: 'run them without --pin' });
    }
    this.detached = true;
    for (const w of this.watches) w?.close();
    for (const g of this.groups) {
      g.attachment.disown();
      g.attachment.link?.close();
      g.loaded.close();
    }
  }

  [Symbol.dispose](): void {
    this.detach();
  }
}

/** Compiles, loads and attaches every group; on any failure, undoes what was done and throws. */
export function attachGroups(groups: RuleGroup[], opts: LiveOptions): LiveSession {
  const done: AttachedGroup[] = [];
  try {
    for (const group of groups) {
      // Before any work: a hook someone else holds, or one a dead netmangle left a program on.
      refuseHeldHook({ netns: group.netns, dev: group.dev, hook: group.hook, priority: opts.priority });
      refuseOrphanedHook({ netns: group.netns, dev: group.dev, hook: group.hook });
      const plan = holdPlan(group);
      const delayLine = plan.specs.length > 0 ? startDelayLine({
        dev: group.dev, hook: group.hook, netns: group.netns, specs: plan.specs, path: opts.path, limits: opts.maxHeld,
        onFailure: opts.onDelayLineFailure && ((message) => opts.onDelayLineFailure!(message, group)),
      }) : undefined;
      let loaded: LoadedProgram;
      try {
        const hold = delayLine && {
          rule: new Map([...plan.ruleSpec.keys()].map((rule) => [rule, delayLine.ifindex] as const)),
          follower: plan.specs.some((spec) => spec.kind === 'reorder') ? delayLine.ifindex : undefined,
          mark: delayLine.mark,
          heldBy: 'time' as const,
          // One TAP for all: each packet tagged with its hold (the spec's index) or as a follower.
          tags: { rule: plan.ruleSpec, follower: HOLD_FOLLOWER_TAG },
        };
        const compiled = compileGroup(group, { seed: opts.seed, lookupField, hold });
        loaded = loadCompiled(compiled);
      } catch (err) {
        delayLine?.close();
        throw err;
      }
      let restore: number | undefined;
      try {
        delayLine?.start();
        if (opts.perSegment && group.hook === 'egress') {
          const current = gsoMaxSegs(group.dev, group.netns);
          if (current !== 1) {
            setGsoMaxSegs(group.dev, group.netns, 1);
            restore = current;
          }
        }
        const attachment = attachHolding(loaded, group, delayLine !== undefined, opts);
        done.push({ loaded, attachment, restoreGsoMaxSegs: restore, delayLine });
      } catch (err) {
        if (restore !== undefined) setGsoMaxSegs(group.dev, group.netns, restore);
        loaded.close();
        delayLine?.close();
        throw err;
      }
    }
  } catch (err) {
    new LiveSession(done).detach();
    throw err;
  }
  return new LiveSession(done);
}

/**
 * Attaches the group's program. At xdp a delay line needs native XDP: in generic (skb) mode a
 * packet sent back into the interface's receive path meets the XDP program again and would be
 * held again and again.
 */
function attachHolding(loaded: LoadedProgram, group: RuleGroup, holds: boolean, live: LiveOptions): Attachment {
  const opts: AttachOptions = {
    dev: group.dev, hook: group.hook, netns: group.netns, path: live.path ?? 'auto', tcPriority: group.hook === 'xdp' ? undefined : live.priority,
    owner: live.guard === false ? undefined : guardedOwner(group.rules.map((r) => ({ name: r.name, text: r.text }))),
  };
  if (!holds || group.hook !== 'xdp') return attachProgram(loaded.prog, opts);
  try {
    return attachProgram(loaded.prog, { ...opts, xdpMode: 'drv' });
  } catch (err) {
    throw new NetmangleError(`delay and reorder at xdp need native XDP, and ${group.dev} has none: ${(err as Error).message.replace(/^cannot attach XDP program '[^']*' to /, '')}`, {
      hint: 'use --hook ingress (tc), which holds packets on any device',
      cause: err,
    });
  }
}

/**
 * How a group's rules hold packets: the distinct `delay` and `reorder` specs (the program tags
 * their packets 0, 1, …) and, per rule index that holds packets, the index of its spec.
 */
export function holdPlan(group: RuleGroup): { specs: HoldSpec[]; ruleSpec: Map<number, number> } {
  const specs: HoldSpec[] = [];
  const keys: string[] = [];
  const ruleSpec = new Map<number, number>();
  group.rules.forEach((r, i) => {
    for (const a of r.actions) {
      let spec: HoldSpec;
      if (a.kind === 'delay') spec = { kind: 'delay', ns: a.ns, jitterNs: a.jitterNs, distribution: a.distribution };
      else if (a.kind === 'reorder') spec = { kind: 'reorder', by: a.by, timeoutNs: a.timeoutNs };
      else continue;
      const key = JSON.stringify(spec);
      let k = keys.indexOf(key);
      if (k < 0) {
        k = keys.push(key) - 1;
        specs.push(spec);
      }
      ruleSpec.set(i, k);
    }
  });
  return { specs, ruleSpec };
}

/** The device's gso_max_segs (IFLA_GSO_MAX_SEGS), read through `ip -d link` in its namespace. */
export function gsoMaxSegs(dev: string, netns?: string): number {
  linkByName(dev, netns); // a clear error for a missing namespace or interface
  const [cmd, ...args] = ipCommand(netns, ['-d', 'link', 'show', 'dev', dev]);
  const r = childProcess().spawnSync(cmd!, args, { encoding: 'utf8' });
  const m = /gso_max_segs (\d+)/.exec(r.stdout ?? '');
  if (r.status !== 0 || !m) throw new NetmangleError(`cannot read gso_max_segs of ${dev}: ${(r.stderr ?? '').trim()}`);
  return Number(m[1]);
}

export function setGsoMaxSegs(dev: string, netns: string | undefined, value: number): void {
  const [cmd, ...args] = ipCommand(netns, ['link', 'set', 'dev', dev, 'gso_max_segs', String(value)]);
  const r = childProcess().spawnSync(cmd!, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new NetmangleError(`cannot set gso_max_segs of ${dev} to ${value}: ${(r.stderr ?? '').trim()}`);
}
