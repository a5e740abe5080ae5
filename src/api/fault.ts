/**
 * `attach()`: rules compiled, loaded and attached in this process, as a handle that detaches
 * when disposed. The kernel work is the CLI's (live/attachGroups); this adds the checks a
 * library caller needs before anything is loaded, plain-number counters, and the record that
 * makes the attachment visible to `netmangle status`.
 */
import { connectionMemoryNote } from '../compiler/index.js';
import { DEFAULT_HOLD_LIMITS } from '../delay/queue.js';
import type { DelayLineStats } from '../delay/stats.js';
import { describeError, NetmangleError, UsageError } from '../errors.js';
import { linkByName } from '../kernel/iface.js';
import { requireNetns } from '../kernel/netns.js';
import { attachGroups, type LiveSession } from '../live/index.js';
import { recordRun, type RunRecord } from '../live/registry.js';
import type { Hook, RuleGroup } from '../rules/ast.js';
import { resolveRules, type RuleInput, type RuleSet, type Target, type Triggers } from './rules.js';

/** How attach() loads and attaches a rule set (whose rules carry their own triggers). */
export type AttachSettings = Pick<AttachOptions, 'seed' | 'path' | 'perSegment' | 'maxHeld' | 'onFailure' | 'priority'>;

/** How attach() loads and attaches, beyond the rules' triggers. */
export interface AttachOptions extends Triggers {
  /** Seed of the random decisions (`probability`, `delay … jitter`): 0 to 2³²−1. Default: random (see Fault.seed). */
  seed?: number;
  /**
   * `auto` (default): BPF links where the kernel has them (XDP links 5.9+, tcx 6.6+), else
   * netlink (IFLA_XDP, clsact + cls_bpf). `link`: links only. `netlink`: netlink only
   * (these would outlive a crash of this process: a guardian process removes them then,
   * docs/lifecycle.md).
   */
  path?: 'auto' | 'link' | 'netlink';
  /** At tc egress, set the device's gso_max_segs to 1 while attached (every TCP segment meets the rules on its own). */
  perSegment?: boolean;
  /** Most packets and bytes a delay line holds at once (default 10000 packets, 64 MiB); beyond, packets pass undelayed and are counted. */
  maxHeld?: { packets?: number; bytes?: number };
  /**
   * Called if a delay line (the thread that holds packets for `delay` and `reorder`) stops by
   * itself, or an interface of the fault (or its namespace) is deleted or moved. The fault has
   * been detached by then, and `failure` says why.
   */
  onFailure?: (message: string) => void;
  /**
   * tc ingress/egress through netlink: the cls_bpf filter's priority, 1..65535, lower runs first.
   * Default: after every filter already there. (tcx has no priorities: refused there.)
   */
  priority?: number;
}

/** Where one program of a fault sits. */
export interface AttachmentInfo {
  dev: string;
  hook: Hook;
  /** The namespace as given (name or path); absent for the caller's own namespace. */
  netns?: string;
  ifindex: number;
  /** `tcx` (tcx link, 6.6+), `link` (XDP link, 5.9+) or `netlink` (IFLA_XDP, cls_bpf). */
  path: 'link' | 'tcx' | 'netlink';
  /** The program's kernel id (`bpftool prog show id N`). */
  programId: number;
  /** XDP only: the mode the program runs in. */
  xdpMode?: 'skb' | 'drv';
  /** The rules the program carries, in order. */
  rules: Array<{ name: string; text: string }>;
  /** Set when this attachment would outlive a crash of the process (netlink path without a guardian). */
  warning?: string;
  /** perSegment: the device's gso_max_segs before it was set to 1 (put back on detach). */
  gsoMaxSegsWas?: number;
  /** Set when the program's per-connection map locks a large amount of kernel memory (said up front). */
  memoryNote?: string;
}

/** Counters of one rule, summed over CPUs. */
export interface RuleCounts {
  name: string;
  text: string;
  dev: string;
  hook: Hook;
  netns?: string;
  /** Packets that matched the rule's condition. */
  matched: number;
  /** Times the rule's actions ran (a matching packet that passed probability, every, first …). */
  acted: number;
  /** Packets the rule dropped. */
  dropped: number;
}

/** A delay line's counters (the rules of one hook that `delay` or `reorder`). */
export interface DelayLineCounts extends DelayLineStats {
  dev: string;
  hook: Hook;
  netns?: string;
}

export interface FaultCounters {
  rules: RuleCounts[];
  delayLines: DelayLineCounts[];
  /**
   * GSO super-packets the programs saw (tc egress of locally sent TCP): such a packet is cut
   * into segments after the hook, so a flag like PSH ends up on its last segment only.
   * `perSegment` avoids them.
   */
  gsoPackets: number;
}

/**
 * Rules attached in this process. Dispose it (`await using`, `using`) or call detach(): after
 * that nothing of it stays on any hook. Programs attached through BPF links also go away if
 * the process dies; netlink attachments (`path: 'netlink'`, or kernels without links) do not.
 */
export interface Fault extends AsyncDisposable, Disposable {
  /** The seed of the random decisions, chosen at random when none was given: pass it back to repeat a run. */
  readonly seed: number;
  /** One entry per program: rules for one (namespace, interface, hook) make one program. */
  readonly attachments: readonly AttachmentInfo[];
  /** False once detached (by detach(), disposal, a delay line failure, or an interface going away). */
  readonly attached: boolean;
  /** Why the fault detached by itself (a delay line stopped; an interface or its namespace was deleted), if it did. */
  readonly failure: string | undefined;
  /**
   * Counters per rule, read from the programs' maps now; once detached, the last values read
   * at detach time.
   */
  counters(): FaultCounters;
  /**
   * Changes the fault's rules or triggers. Where the kernel allows, each new program takes its
   * old one's place on the hook in one step (BPF_LINK_UPDATE: XDP links 5.9+, tcx 6.6+), so
   * every packet meets either the old rules or the new: `{ atomic: true }`. Otherwise (netlink
   * attachments, `delay`/`reorder` rules old or new, a different set of hooks) the old programs
   * are detached and the new ones attached: `{ atomic: false }`. Counters start again from zero.
   *
   * Takes what attach() takes; one-line rules without a target go to the fault's own target, and
   * the seed, path, perSegment and maxHeld stay as they were unless given.
   * @throws UsageError / NetmangleError as attach() does. When the new rules cannot be compiled
   *   or loaded, the old ones stay attached. When the detach + attach fails at attaching, the old
   *   rules are attached again if possible (else the fault ends detached: `attached` says which).
   */
  replace(rules: string | readonly string[], target?: Target, options?: AttachOptions): Promise<{ atomic: boolean }>;
  replace(rules: RuleSet, target?: { netns?: string }, options?: AttachSettings): Promise<{ atomic: boolean }>;
  /** Plain data for JSON: seed, attached, failure, attachments and counters. */
  toJSON(): { seed: number; attached: boolean; failure?: string; attachments: readonly AttachmentInfo[]; counters: FaultCounters };
  /**
   * Detaches every program, removes delay lines, restores device settings. Idempotent.
   * @throws NetmangleError if the kernel refused a step (the other steps are still done).
   */
  detach(): Promise<void>;
}

/** What a fault attaches with, beyond its rules (kept for replace()). */
interface Settings {
  seed: number;
  path: 'auto' | 'link' | 'netlink';
  perSegment?: boolean;
  maxHeld?: { packets: number; bytes: number };
  onFailure?: (message: string) => void;
  priority?: number;
}

function attachmentInfo(session: LiveSession): AttachmentInfo[] {
  return session.groups.map((g) => {
    const a = g.attachment;
    const info: AttachmentInfo = { dev: a.dev, hook: a.hook, ifindex: a.ifindex, path: a.path, programId: a.progId, rules: g.loaded.compiled.rules.map((r) => ({ ...r })) };
    if (a.netns !== undefined) info.netns = a.netns;
    if (a.xdpMode !== undefined) info.xdpMode = a.xdpMode;
    if (a.warning !== undefined) info.warning = a.warning;
    if (g.restoreGsoMaxSegs !== undefined) info.gsoMaxSegsWas = g.restoreGsoMaxSegs;
    const memory = connectionMemoryNote(g.loaded.compiled);
    if (memory !== undefined) info.memoryNote = memory;
    return info;
  });
}

/** How often counters() writes the delay lines' counters into the run record `netmangle status` reads. */
const RECORD_REFRESH_MS = 900;

/**
 * Faults attached in this process. When it exits without detaching them (process.exit(), the
 * end of the event loop, an uncaught exception), they are detached on the way out: BPF links
 * would go with the process anyway, but netlink attachments, `gso_max_segs` changed by
 * perSegment and a delay line (whose thread would keep the process from ending) would stay.
 * (A signal's default action ends the process without an 'exit' event; links still go then.)
 */
const live = new Set<AttachedFault>();
let exitHook = false;

function track(fault: AttachedFault): void {
  live.add(fault);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const f of live) {
      try {
        f.detachNow();
      } catch (err) {
        process.stderr.write(`netmangle: while detaching at exit: ${describeError(err)}\n`);
      }
    }
  });
}

/** How often a fault looks whether its interfaces are still there. */
const WATCH_MS = 250;

class AttachedFault implements Fault {
  #session: LiveSession | undefined;
  #groups: RuleGroup[];
  #settings: Settings;
  #target: Target | { netns?: string } | undefined;
  #attachments: AttachmentInfo[] = [];
  #record: RunRecord | undefined;
  #last: FaultCounters | undefined;
  #failure: string | undefined;
  #refreshedAt = 0;
  #watchTimer: NodeJS.Timeout | undefined;

  constructor(groups: RuleGroup[], settings: Settings, target: Target | { netns?: string } | undefined) {
    this.#groups = groups;
    this.#settings = settings;
    this.#target = target;
    this.#start(groups, settings);
  }

  /** Attaches `groups` as this fault's session (throws, with nothing attached, on failure). */
  #start(groups: RuleGroup[], settings: Settings): void {
    let session: LiveSession | undefined;
    const pending: string[] = [];
    session = attachGroups(groups, {
      seed: settings.seed,
      path: settings.path,
      perSegment: settings.perSegment,
      maxHeld: settings.maxHeld,
      priority: settings.priority,
      onDelayLineFailure: (message, g) => {
        const text = `delay line on ${g.dev} ${g.hook}${g.netns ? ` (netns ${g.netns})` : ''}: ${message}`;
        // A failure while attachGroups is still running is reported once the fault exists.
        if (this.#session !== session) pending.push(text);
        else this.failed(text);
      },
    });
    // An interface deleted or moved, or its namespace deleted, under the fault: it detaches
    // (a delay line's TAP would keep a deleted namespace alive) and says why, as for a delay
    // line that failed. Watched from now on, before the caller hears the fault is attached.
    try {
      session.watch();
    } catch (err) {
      session.detach();
      throw err;
    }
    this.#watchTimer = setInterval(() => {
      let why: string | undefined;
      try {
        why = session!.gone();
      } catch (err) {
        why = `cannot watch the interfaces: ${describeError(err)}`;
      }
      if (why && this.#session === session) this.failed(why);
    }, WATCH_MS).unref();
    this.#session = session;
    this.#groups = groups;
    this.#settings = settings;
    this.#last = undefined;
    track(this);
    this.#attachments = attachmentInfo(session);
    try {
      this.#record = recordRun(session.groups, settings.seed);
    } catch {
      // Without /run/netmangle, `netmangle status` does not show this fault; it works all the same.
      this.#record = undefined;
    }
    if (pending.length > 0) this.failed(pending[0]!);
  }

  get seed(): number {
    return this.#settings.seed;
  }

  get attachments(): readonly AttachmentInfo[] {
    return this.#attachments;
  }

  get attached(): boolean {
    return this.#last === undefined;
  }

  get failure(): string | undefined {
    return this.#failure;
  }

  counters(): FaultCounters {
    if (this.#last) return this.#last;
    const out: FaultCounters = { rules: [], delayLines: [], gsoPackets: 0 };
    for (const s of this.#session!.counters()) {
      const a = s.group.attachment;
      const where = a.netns === undefined ? { dev: a.dev, hook: a.hook } : { dev: a.dev, hook: a.hook, netns: a.netns };
      s.group.loaded.compiled.rules.forEach((r, i) => {
        const c = s.rules[i]!;
        out.rules.push({ name: r.name, text: r.text, ...where, matched: c.matched, acted: c.acted, dropped: c.dropped });
      });
      if (s.delay) out.delayLines.push({ ...where, ...s.delay });
      out.gsoPackets += s.gso;
    }
    if (out.delayLines.length > 0 && this.#record && Date.now() - this.#refreshedAt >= RECORD_REFRESH_MS) {
      this.#refreshedAt = Date.now();
      try {
        this.#record.refresh();
      } catch {
        // `netmangle status` shows older delay line counters; nothing else depends on them.
      }
    }
    return out;
  }

  toJSON(): { seed: number; attached: boolean; failure?: string; attachments: readonly AttachmentInfo[]; counters: FaultCounters } {
    const out: ReturnType<Fault['toJSON']> = { seed: this.seed, attached: this.attached, attachments: this.attachments, counters: this.counters() };
    if (this.#failure !== undefined) out.failure = this.#failure;
    return out;
  }

  async replace(rules: RuleInput, target?: Target | { netns?: string }, options: AttachOptions = {}): Promise<{ atomic: boolean }> {
    if (!this.attached) throw new NetmangleError('the fault is detached; attach the rules anew', { hint: 'replace() changes a fault that is attached' });
    const { seed, path, perSegment, maxHeld, onFailure, priority, ...triggers } = options;
    const settings: Settings = {
      priority: priority ?? this.#settings.priority,
      seed: this.#settings.seed,
      path: path === undefined ? this.#settings.path : checkPath(path),
      perSegment: perSegment ?? this.#settings.perSegment,
      maxHeld: maxHeld === undefined ? this.#settings.maxHeld : holdLimits(maxHeld),
      onFailure: onFailure ?? this.#settings.onFailure,
    };
    const oneLine = typeof rules === 'string' || Array.isArray(rules);
    const where = target ?? (oneLine ? this.#target : undefined);
    const resolved = resolveRules(rules, where as Partial<Target> | undefined, triggers, seed ?? settings.seed);
    settings.seed = resolved.seed;
    checkPerSegment(settings.perSegment, resolved.groups);
    precheck(resolved.groups);
    const sameSettings = settings.path === this.#settings.path && settings.perSegment === this.#settings.perSegment && settings.maxHeld === this.#settings.maxHeld
      && settings.priority === this.#settings.priority;
    if (sameSettings && this.#session!.replaceInPlace(resolved.groups, settings.seed)) {
      this.#record?.remove();
      this.#groups = resolved.groups;
      this.#settings = settings;
      this.#target = where;
      this.#attachments = attachmentInfo(this.#session!);
      try {
        this.#record = recordRun(this.#session!.groups, settings.seed);
      } catch {
        this.#record = undefined;
      }
      return { atomic: true };
    }
    const old = { groups: this.#groups, settings: this.#settings };
    this.detachNow();
    try {
      this.#start(resolved.groups, settings);
      this.#target = where;
    } catch (err) {
      try {
        this.#start(old.groups, old.settings);
      } catch {
        // The fault stays detached; `attached` says so.
      }
      throw err;
    }
    return { atomic: false };
  }

  /** Detaches now; the first error of any step is thrown after all steps ran. */
  detachNow(): void {
    if (this.#last) return;
    try {
      this.#last = this.counters();
    } catch {
      this.#last = { rules: [], delayLines: [], gsoPackets: 0 };
    }
    live.delete(this);
    clearInterval(this.#watchTimer);
    try {
      this.#session!.detach();
    } finally {
      this.#record?.remove();
      this.#record = undefined;
    }
  }

  failed(message: string): void {
    const first = this.#failure === undefined;
    this.#failure ??= message;
    try {
      this.detachNow();
    } catch {
      // The failure is what the caller hears about.
    }
    if (first) this.#settings.onFailure?.(message);
  }

  async detach(): Promise<void> {
    this.detachNow();
  }

  [Symbol.dispose](): void {
    this.detachNow();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.detachNow();
  }
}

/** Fails early, before anything is loaded, for a missing namespace or interface, or without root. */
function precheck(groups: RuleGroup[]): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new NetmangleError('attaching rules needs root (CAP_BPF and CAP_NET_ADMIN)', { hint: 'run as root, or try the rules offline with replay()' });
  }
  for (const g of groups) {
    requireNetns(g.netns);
    linkByName(g.dev, g.netns);
  }
}

function checkPath(path: string): Settings['path'] {
  if (path !== 'auto' && path !== 'link' && path !== 'netlink') throw new UsageError(`path ${JSON.stringify(path)}: must be auto, link or netlink`);
  return path;
}

function holdLimits(maxHeld: { packets?: number; bytes?: number }): { packets: number; bytes: number } {
  const limits = { packets: maxHeld.packets ?? DEFAULT_HOLD_LIMITS.packets, bytes: maxHeld.bytes ?? DEFAULT_HOLD_LIMITS.bytes };
  for (const [k, v] of Object.entries(limits)) {
    if (!Number.isSafeInteger(v) || v < 1) throw new UsageError(`maxHeld.${k} must be a whole number of at least 1, not ${JSON.stringify(v)}`);
  }
  return limits;
}

function checkPerSegment(perSegment: boolean | undefined, groups: RuleGroup[]): void {
  if (perSegment && groups.every((g) => g.hook !== 'egress')) throw new UsageError('perSegment applies at tc egress, and no rule is for egress');
}

/**
 * Compiles the rules to eBPF, loads the programs and attaches them, one per (namespace,
 * interface, hook). Either every program ends up attached or nothing stays behind.
 *
 *     await using fault = await attach('tcp.flags.push => delay 2ms', { dev: 'eth0', hook: 'egress', netns: 'h1' },
 *       { first: 1, perConnection: true });
 *
 * @param rules One-line rules (`MATCH => ACTION, …`; several for one target make one program)
 *   or a rule set from parseRules / loadRulesFile / loadRulesText (whose rules carry their own
 *   interfaces and hooks; then `target` may only give a default `netns`).
 * @param target The interface, hook and namespace (an `ip netns` name or a path such as
 *   `/proc/PID/ns/net`) of one-line rules.
 * @param options Triggers of one-line rules (as `netmangle run`'s options), seed, attach path.
 * @throws UsageError (exit code 2) for a bad rule (the message names the column), trigger or target value.
 * @throws NetmangleError for a missing namespace or interface, without root, for a hook that
 *   holds a program netmangle did not attach, or when the kernel refuses (the message says why).
 * Kernel: with `path: 'auto'`, XDP links where the kernel has them (5.9+) and tcx links at tc
 * hooks (6.6+), else netlink. `delay` and `reorder` at xdp need a driver with native XDP.
 */
export async function attach(rules: string | readonly string[], target: Target, options?: AttachOptions): Promise<Fault>;
export async function attach(rules: RuleSet, target?: { netns?: string }, options?: AttachSettings): Promise<Fault>;
export async function attach(rules: RuleInput, target?: Target | { netns?: string }, options: AttachOptions = {}): Promise<Fault> {
  const { seed, path, perSegment, maxHeld, onFailure, priority, ...triggers } = options;
  const settings: Settings = { seed: 0, path: path === undefined ? 'auto' : checkPath(path), perSegment, maxHeld: maxHeld && holdLimits(maxHeld), onFailure, priority };
  const resolved = resolveRules(rules, target as Partial<Target> | undefined, triggers, seed);
  settings.seed = resolved.seed;
  checkPerSegment(perSegment, resolved.groups);
  precheck(resolved.groups);
  return new AttachedFault(resolved.groups, settings, target);
}
