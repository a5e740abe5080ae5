/**
 * `attach()`: rules compiled, loaded and attached in this process, as a handle that detaches
 * when disposed. The kernel work is the CLI's (live/attachGroups); this adds the checks a
 * library caller needs before anything is loaded, plain-number counters, and the record that
 * makes the attachment visible to `netmangle status`.
 */
import { DEFAULT_HOLD_LIMITS } from '../delay/queue.js';
import type { DelayLineStats } from '../delay/stats.js';
import { NetmangleError } from '../errors.js';
import { linkByName } from '../kernel/iface.js';
import { requireNetns } from '../kernel/netns.js';
import { attachGroups, type LiveSession } from '../live/index.js';
import { canReplaceInLinks, replaceInLinks } from '../live/replace.js';
import { recordRun, type RunRecord } from '../live/registry.js';
import type { Hook, RuleGroup } from '../rules/ast.js';
import { resolveRules, type RuleInput, type Target, type Triggers } from './rules.js';

/** How attach() loads and attaches, beyond the rules' triggers. */
export interface AttachOptions extends Triggers {
  /** Seed of the random decisions (`probability`, `delay … jitter`): 0 to 2³²−1. Default: random (see Fault.seed). */
  seed?: number;
  /**
   * `auto` (default): BPF links where the kernel has them (XDP links 5.9+, tcx 6.6+), else
   * netlink (IFLA_XDP, clsact + cls_bpf). `link`: links only. `netlink`: netlink only
   * (these attachments outlive a crash of this process).
   */
  path?: 'auto' | 'link' | 'netlink';
  /** At tc egress, set the device's gso_max_segs to 1 while attached (every TCP segment meets the rules on its own). */
  perSegment?: boolean;
  /** Most packets and bytes a delay line holds at once (default 10000 packets, 64 MiB); beyond, packets pass undelayed and are counted. */
  maxHeld?: { packets?: number; bytes?: number };
  /**
   * Called if a delay line (the thread that holds packets for `delay` and `reorder`) stops by
   * itself. The fault has been detached by then, and `failure` says why.
   */
  onFailure?: (message: string) => void;
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
  /** Set when this attachment outlives a crash of the process (netlink path). */
  warning?: string;
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
  /** False once detached (by detach(), disposal, or a delay line failure). */
  readonly attached: boolean;
  /** Why the fault detached by itself (a delay line stopped), if it did. */
  readonly failure: string | undefined;
  /**
   * Counters per rule, read from the programs' maps now; once detached, the last values read
   * at detach time.
   */
  counters(): FaultCounters;
  /**
   * Detaches every program, removes delay lines, restores device settings. Idempotent.
   * @throws NetmangleError if the kernel refused a step (the other steps are still done).
   */
  detach(): Promise<void>;
  /**
   * Puts other rules, triggers or seed in the place of this fault's, on the same hooks (the
   * options as for attach(); path, perSegment, maxHeld and onFailure stay as attach() set them;
   * the seed stays unless given). Counters start again from 0.
   * @returns `atomically` when each new program took the old one's place in one step (a tcx
   *   or XDP link updated with BPF_LINK_UPDATE: no packet meets an empty hook or both
   *   programs); `detach-attach` otherwise (netlink attachments, delay lines, other hooks):
   *   the old programs were detached, then the new ones attached.
   * @throws as attach() does; the fault is then as it was (on detach-attach, attached again).
   */
  update(rules: RuleInput, target?: Target | { netns?: string }, options?: AttachOptions): Promise<'atomically' | 'detach-attach'>;
}

/** Attaches checked groups with the options attach() was given (the fault's delay-line failures wired in). */
type StartSession = (groups: RuleGroup[], seed: number) => LiveSession;

function describeAttachments(session: LiveSession): AttachmentInfo[] {
  return session.groups.map((g) => {
    const a = g.attachment;
    const info: AttachmentInfo = { dev: a.dev, hook: a.hook, ifindex: a.ifindex, path: a.path, programId: a.progId, rules: g.loaded.compiled.rules.map((r) => ({ ...r })) };
    if (a.netns !== undefined) info.netns = a.netns;
    if (a.xdpMode !== undefined) info.xdpMode = a.xdpMode;
    if (a.warning !== undefined) info.warning = a.warning;
    return info;
  });
}

function recordOf(session: LiveSession, seed: number): RunRecord | undefined {
  try {
    return recordRun(session.groups, seed);
  } catch {
    // Without /run/netmangle, `netmangle status` does not show this fault; it works all the same.
    return undefined;
  }
}

class AttachedFault implements Fault {
  #attachments: AttachmentInfo[];
  #seed: number;
  #groups: RuleGroup[];
  #start: StartSession;
  #session: LiveSession;
  #record: RunRecord | undefined;
  #last: FaultCounters | undefined;
  #failure: string | undefined;

  constructor(session: LiveSession, seed: number, groups: RuleGroup[], start: StartSession) {
    this.#session = session;
    this.#seed = seed;
    this.#groups = groups;
    this.#start = start;
    this.#attachments = describeAttachments(session);
    this.#record = recordOf(session, seed);
  }

  get seed(): number {
    return this.#seed;
  }

  get attachments(): readonly AttachmentInfo[] {
    return this.#attachments;
  }

  async update(rules: RuleInput, target?: Target | { netns?: string }, options: AttachOptions = {}): Promise<'atomically' | 'detach-attach'> {
    if (this.#last) throw new NetmangleError('this fault is detached', { hint: 'attach() a new one' });
    const { seed, path, perSegment, maxHeld, onFailure, ...triggers } = options;
    const fixed = Object.entries({ path, perSegment, maxHeld, onFailure }).find(([, v]) => v !== undefined);
    if (fixed) throw new NetmangleError(`update() cannot change ${fixed[0]}: it stays as attach() set it`, { exitCode: 2, hint: 'detach and attach() again to change it' });
    const resolved = resolveRules(rules, target as Partial<Target> | undefined, triggers, seed ?? this.#seed);
    precheck(resolved.groups);
    let how: 'atomically' | 'detach-attach';
    if (canReplaceInLinks(this.#session, resolved.groups)) {
      replaceInLinks(this.#session, resolved.groups, resolved.seed);
      how = 'atomically';
    } else {
      this.#session.detach();
      try {
        this.#session = this.#start(resolved.groups, resolved.seed);
      } catch (err) {
        try {
          this.#session = this.#start(this.#groups, this.#seed);
        } catch {
          // Not even the old rules attach again (their interface is gone): the fault is detached.
          this.#last = { rules: [], delayLines: [], gsoPackets: 0 };
          this.#record?.remove();
        }
        throw err;
      }
      how = 'detach-attach';
    }
    this.#groups = resolved.groups;
    this.#seed = resolved.seed;
    this.#attachments = describeAttachments(this.#session);
    this.#record?.remove();
    this.#record = recordOf(this.#session, this.#seed);
    return how;
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
    for (const s of this.#session.counters()) {
      const a = s.group.attachment;
      const where = a.netns === undefined ? { dev: a.dev, hook: a.hook } : { dev: a.dev, hook: a.hook, netns: a.netns };
      s.group.loaded.compiled.rules.forEach((r, i) => {
        const c = s.rules[i]!;
        out.rules.push({ name: r.name, text: r.text, ...where, matched: c.matched, acted: c.acted, dropped: c.dropped });
      });
      if (s.delay) out.delayLines.push({ ...where, ...s.delay });
      out.gsoPackets += s.gso;
    }
    return out;
  }

  /** Detaches now; the first error of any step is thrown after all steps ran. */
  detachNow(): void {
    if (this.#last) return;
    try {
      this.#last = this.counters();
    } catch {
      this.#last = { rules: [], delayLines: [], gsoPackets: 0 };
    }
    try {
      this.#session.detach();
    } finally {
      this.#record?.remove();
    }
  }

  failed(message: string): void {
    this.#failure ??= message;
    try {
      this.detachNow();
    } catch {
      // The failure is what the caller hears about.
    }
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
export async function attach(rules: RuleInput, target?: Target | { netns?: string }, options: AttachOptions = {}): Promise<Fault> {
  const { seed, path, perSegment, maxHeld, onFailure, ...triggers } = options;
  if (path !== undefined && !['auto', 'link', 'netlink'].includes(path)) throw new NetmangleError(`path ${JSON.stringify(path)}: must be auto, link or netlink`, { exitCode: 2 });
  const resolved = resolveRules(rules, target as Partial<Target> | undefined, triggers, seed);
  if (perSegment && resolved.groups.every((g) => g.hook !== 'egress')) {
    throw new NetmangleError('perSegment applies at tc egress, and no rule is for egress', { exitCode: 2 });
  }
  precheck(resolved.groups);
  let fault: AttachedFault | undefined;
  const pending: string[] = [];
  const start: StartSession = (groups, seed) => attachGroups(groups, {
    seed,
    path: path ?? 'auto',
    perSegment,
    maxHeld: maxHeld && { packets: maxHeld.packets ?? DEFAULT_HOLD_LIMITS.packets, bytes: maxHeld.bytes ?? DEFAULT_HOLD_LIMITS.bytes },
    onDelayLineFailure: (message, g) => {
      const text = `delay line on ${g.dev} ${g.hook}${g.netns ? ` (netns ${g.netns})` : ''}: ${message}`;
      if (!fault) {
        pending.push(text);
        return;
      }
      const first = fault.failure === undefined;
      fault.failed(text);
      if (first) onFailure?.(text);
    },
  });
  fault = new AttachedFault(start(resolved.groups, resolved.seed), resolved.seed, resolved.groups, start);
  if (pending.length > 0) {
    fault.failed(pending[0]!);
    onFailure?.(pending[0]!);
  }
  return fault;
}
