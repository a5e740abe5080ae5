/**
 * The user-space delay line of `delay` and `reorder` (see docs/delay.md). The rule's program
 * redirects chosen packets, tagged with their hold spec (or as followers of `reorder`), to a
 * TAP device netmangle owns; the DelayLine reads them in order, holds each for its time and
 * writes them back into the TAP, whose program at tc ingress sends them on: out of `dev`
 * (egress rules, marked with the line's own mark, layout.ts delayedMark, which the rule's
 * program lets pass) or into `dev`'s receive path (ingress and xdp rules; past the XDP
 * program). The TAP is not persistent and the programs hang on BPF links this process holds,
 * so if netmangle dies everything goes with it and traffic flows undelayed again.
 */
import { Assembler } from '../bpf/asm.js';
import { R1, R2 } from '../bpf/opcodes.js';
import { BPF_F_INGRESS, delayedMark, HELPER, MAX_HOLD_SPECS, SKB } from '../compiler/layout.js';
import { NetmangleError } from '../errors.js';
import { attachProgram, type Attachment } from '../kernel/attach.js';
import { ifindexByName } from '../kernel/iface.js';
import { inNetns } from '../kernel/netns.js';
import { getLink } from '../kernel/rtnetlink.js';
import { loadProgram, type Program } from '../kernel/index.js';
import type { Hook } from '../rules/ast.js';
import { DelayLine } from './line.js';
import type { DelayLineStats } from './stats.js';
import type { HoldLimits, HoldSpec } from './queue.js';
import { createTap, type Tap } from './tap.js';

export { DelayLine } from './line.js';
export { formatDelayStats, type DelayLineStats } from './stats.js';
export { createTap, type Tap } from './tap.js';
export { connKeyOf } from './flow.js';
export { uncountHeld, type HeldCounts } from './held.js';
export { DEFAULT_HOLD_LIMITS, HoldQueue, drawDelayNs, seededRandom, type HoldLimits, type HoldSpec, type HoldStats, type Release } from './queue.js';

export interface DelayLineOptions {
  /** The interface and hook the rule's program runs at. */
  dev: string;
  hook: Hook;
  netns?: string;
  /** The distinct ways the group's rules hold packets: the tags 0, 1, … the program gives their packets. */
  specs: readonly HoldSpec[];
  path?: 'auto' | 'link' | 'tcx' | 'netlink';
  limits?: HoldLimits;
  /** Called once if the line's thread stops by itself (see DelayLine). */
  onFailure?: (message: string) => void;
}

export interface RunningDelayLine extends Disposable {
  readonly tap: Tap;
  /** Where the program redirects every packet to hold and every follower of `reorder` (tagged). */
  readonly ifindex: number;
  /** The mark packets this line sends on carry (the rule's program clears it and lets them pass). */
  readonly mark: number;
  /** Starts the line's thread (once the program is loaded, before it is attached). */
  start(): void;
  stats(): DelayLineStats;
  /** Detaches the TAP's program, stops the line and removes the TAPs. Idempotent. */
  close(): void;
}

/**
 * The program on the line's TAP: send what netmangle writes back on through `ifindex`: out of
 * its egress (marked, so the rule lets it pass), or into its receive path for ingress and xdp
 * rules (unmarked at xdp: the packet comes back after the XDP program, which never sees it).
 */
export function returnProgramInsns(ifindex: number, hook: Hook, mark: number) {
  const a = new Assembler();
  if (hook !== 'xdp') a.movImm(R2, mark).stx(4, R1, SKB.mark, R2);
  a.movImm(R1, ifindex).movImm(R2, hook === 'egress' ? 0 : BPF_F_INGRESS).call(HELPER.redirect).exit();
  return a.assemble().insns;
}

/** Frames the TAP dropped on transmit: the program sent them, its queue was full, the line never saw them. */
function tapTxDropped(tap: Tap): number {
  try {
    return inNetns(tap.netns, () => getLink(tap.ifindex))?.txDropped ?? 0;
  } catch {
    return 0;
  }
}

/** Creates the TAP in `dev`'s namespace, attaches the return program and starts the line. */
export function startDelayLine(opts: DelayLineOptions): RunningDelayLine {
  if (opts.specs.length > MAX_HOLD_SPECS) {
    throw new NetmangleError(`${opts.specs.length} different delays and reorders on ${opts.dev} ${opts.hook}; at most ${MAX_HOLD_SPECS}`, { hint: 'give more rules the same delay' });
  }
  const devIndex = ifindexByName(opts.dev, opts.netns);
  const tap = createTap(opts.netns);
  const mark = delayedMark(tap.ifindex);
  let prog: Program | undefined;
  let attachment: Attachment;
  try {
    prog = loadProgram({ type: 'sched_cls', insns: returnProgramInsns(devIndex, opts.hook, mark), name: 'nm_delay_back' });
    attachment = attachProgram(prog, { dev: tap.name, hook: 'ingress', netns: opts.netns, path: opts.path ?? 'auto' });
  } catch (err) {
    prog?.close();
    tap.close();
    throw err;
  }
  const line = new DelayLine(tap.fd, opts.specs, { limits: opts.limits, onFailure: opts.onFailure });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    line.stop();
    try {
      attachment.detach();
    } finally {
      prog!.close();
      tap.close();
    }
  };
  return {
    tap,
    ifindex: tap.ifindex,
    mark,
    start: () => line.start(),
    stats: () => ({ ...line.stats, lost: tapTxDropped(tap) }),
    close,
    [Symbol.dispose]: close,
  };
}
