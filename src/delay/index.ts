/**
 * The user-space delay line of `delay` (see docs/delay.md). The rule's program at tc egress of
 * `dev` redirects chosen packets to a TAP device netmangle owns; the DelayLine reads them,
 * holds each for its time and writes it back; a small program at tc ingress of the TAP marks
 * it (DELAYED_MARK, which the rule's program lets pass) and redirects it to `dev`'s egress.
 * The TAP is not persistent and both programs hang on BPF links this process holds, so if
 * netmangle dies everything goes with it and traffic flows undelayed again.
 */
import { Assembler } from '../bpf/asm.js';
import { R1, R2 } from '../bpf/opcodes.js';
import { DELAYED_MARK, HELPER, SKB } from '../compiler/layout.js';
import { attachProgram, type Attachment } from '../kernel/attach.js';
import { ifindexByName } from '../kernel/iface.js';
import { loadProgram, type Program } from '../kernel/index.js';
import { DelayLine, type DelaySpec, type DelayLineStats } from './line.js';
import { createTap, type Tap } from './tap.js';

export { DelayLine, type DelaySpec, type DelayLineStats } from './line.js';
export { createTap, type Tap } from './tap.js';

export interface DelayLineOptions {
  /** The interface whose egress the delayed packets go back out of. */
  dev: string;
  netns?: string;
  spec: DelaySpec;
  path?: 'auto' | 'link' | 'tcx' | 'netlink';
}

export interface RunningDelayLine extends Disposable {
  readonly tap: Tap;
  /** Where the rule's program redirects packets to delay. */
  readonly ifindex: number;
  stats(): DelayLineStats;
  /** Detaches the TAP's program, stops the line and removes the TAP. Idempotent. */
  close(): void;
}

/** The TAP's program: mark the frame as delayed and send it out of `ifindex` (its egress). */
export function returnProgramInsns(ifindex: number) {
  const a = new Assembler();
  a.movImm(R2, DELAYED_MARK).stx(4, R1, SKB.mark, R2);
  a.movImm(R1, ifindex).movImm(R2, 0).call(HELPER.redirect).exit();
  return a.assemble().insns;
}

/** Creates the TAP in `dev`'s namespace, attaches its program and starts the line. */
export function startDelayLine(opts: DelayLineOptions): RunningDelayLine {
  const devIndex = ifindexByName(opts.dev, opts.netns);
  const tap = createTap(opts.netns);
  let prog: Program | undefined;
  let attachment: Attachment | undefined;
  try {
    prog = loadProgram({ type: 'sched_cls', insns: returnProgramInsns(devIndex), name: 'nm_delay_back' });
    attachment = attachProgram(prog, { dev: tap.name, hook: 'ingress', netns: opts.netns, path: opts.path ?? 'auto' });
  } catch (err) {
    prog?.close();
    tap.close();
    throw err;
  }
  const line = new DelayLine(tap.fd, opts.spec);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    line.stop();
    try {
      attachment!.detach();
    } finally {
      prog!.close();
      tap.close();
    }
  };
  return { tap, ifindex: tap.ifindex, stats: () => ({ ...line.stats }), close, [Symbol.dispose]: close };
}
