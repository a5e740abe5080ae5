/**
 * Offline replay: every packet of a capture goes through the compiled programs of the hooks
 * chosen, and the packets that leave are written to a new capture (dropped ones gone, changed
 * ones changed, timestamps kept). docs/replay.md describes the choices made here.
 *
 * Memory stays flat: the capture is read and written as a stream, the packet and run objects
 * are reused, and nothing is allocated per packet on the path of a packet that no rule changes.
 */
import { compileGroup, type CompiledProgram } from '../compiler/index.js';
import { NetmangleError, UsageError } from '../errors.js';
import { VmError } from '../vm/index.js';
import type { Hook, RuleGroup } from '../rules/ast.js';
import { lookupField } from '../rules/catalog.js';
import { LINKTYPE_ETHERNET, openCaptureSync, PcapWriter, type CaptureWriter } from '../pcap/index.js';
import { EthernetFrames, formatForPath, openReplayWriter, sameBytes, sameFile, tcCanSee, type CaptureFileFormat } from './capture-io.js';
import { changedFields, differingBytes, formatChanges } from './fields.js';
import type { ObjectProgramSummary } from './object.js';
import { KernelRunner, VmRunner, type ProgramRunner, type ReplayEngine } from './runner.js';
import { DEFAULT_HOLD_LIMITS, type HoldLimits, type Release } from '../delay/queue.js';
import { groupHolds, holdNote, holdSeed, overLimitNote, StageHold, type HeldPacket } from './hold.js';

export { changedFields, formatChanges, locateLayers, type FieldChange, type LayerOffsets } from './fields.js';
export {
  replayObject, hookForProgram, hookOfSection, verdictName, isDropVerdict, ObjectVmRunner, ObjectKernelRunner,
  type ObjectReplayOptions, type ObjectProgramSummary, type ObjectRunner,
} from './object.js';
export { REPLAY_ENGINES, REPLAY_CPU, VmRunner, KernelRunner, type ProgramRunner, type ReplayEngine } from './runner.js';

export { formatForPath, type CaptureFileFormat } from './capture-io.js';

// ---------------------------------------------------------------- which rules apply

export interface GroupSelection {
  /** Only the groups of this hook. */
  hook?: Hook;
  /** Only the groups of this interface (a rules file may name several). */
  dev?: string;
  /** Only the groups of this network namespace. */
  netns?: string;
}

/**
 * The groups a capture goes through, in the order a packet meets them. A capture holds one
 * direction of one interface, so the groups left after the filters must share one interface
 * and be either receive-side (xdp, then tc ingress) or egress alone.
 */
export function selectGroups(groups: readonly RuleGroup[], sel: GroupSelection = {}): RuleGroup[] {
  let chosen = groups.filter((g) => (sel.hook === undefined || g.hook === sel.hook)
    && (sel.dev === undefined || g.dev === sel.dev)
    && (sel.netns === undefined || g.netns === sel.netns));
  if (chosen.length === 0) {
    const what = [sel.hook && `hook ${sel.hook}`, sel.dev && `interface ${sel.dev}`, sel.netns && `namespace ${sel.netns}`].filter(Boolean).join(', ');
    const have = [...new Set(groups.map(whereOf))].join('; ');
    throw new UsageError(`no rules ${what ? `for ${what}` : 'to replay'}`, { hint: have ? `the rules are for: ${have}` : undefined });
  }
  const places = [...new Set(chosen.map((g) => `${g.netns ? `${g.netns}/` : ''}${g.dev}`))];
  if (places.length > 1) {
    throw new UsageError(`the rules are for ${places.length} interfaces (${places.join(', ')}); a capture is what one interface saw`, {
      hint: 'pick one with --dev (and --netns)',
    });
  }
  const hooks = new Set(chosen.map((g) => g.hook));
  if (hooks.has('egress') && hooks.size > 1) {
    throw new UsageError('the rules are for egress and for the receive side (xdp, ingress); a capture holds one direction', {
      hint: 'pick one with --hook egress, --hook xdp or --hook ingress',
    });
  }
  const order: Record<Hook, number> = { xdp: 0, ingress: 1, egress: 2 };
  chosen = chosen.slice().sort((a, b) => order[a.hook] - order[b.hook]);
  return chosen;
}

function whereOf(g: RuleGroup): string {
  return `${g.dev} ${g.hook}${g.netns ? ` (netns ${g.netns})` : ''}`;
}

// ---------------------------------------------------------------- the replay

export interface ReplayOptions {
  /** Groups in the order packets meet them (see selectGroups). */
  groups: readonly RuleGroup[];
  seed: number;
  engine: ReplayEngine;
  /** Capture to read (pcap or pcapng; Ethernet, or a link type toEthernet converts). */
  input: string;
  /** Capture to write. */
  output: string;
  /** Default: pcapng when the output's name ends in .pcapng, else pcap. */
  format?: CaptureFileFormat;
  /** Comment changed packets in a pcapng output (default true). */
  comments?: boolean;
  /** Most packets and bytes each stage's hold queue keeps at once (delay, reorder); beyond, packets go on at once, counted. */
  maxHeld?: HoldLimits;
  /** Called every few thousand packets and at the end, with bytes of the input read so far. */
  onProgress?: (bytesRead: number, packets: number) => void;
}

export interface RuleSummary {
  name: string;
  hook: Hook;
  dev: string;
  /** Packets the rule's program ran on. */
  seen: number;
  matched: number;
  /** Times the rule's actions ran (a matching packet passed its probability / every-N test). */
  acted: number;
  /** Packets that left with bytes different from the input, this rule having acted on them. */
  changed: number;
  dropped: number;
  /** Rules of a group that holds packets: packets this rule delayed, reordered, or would have but the hold was full. */
  delayed?: number;
  reordered?: number;
  overLimit?: number;
}

/** What the hold queues (delay, reorder) did, summed over the stages. */
export interface HoldSummary {
  delayed: number;
  reordered: number;
  /** Reordered packets released by the packets of their connection that overtook them, and by their timeout. */
  overtaken: number;
  timedOut: number;
  /** Packets a full queue sent on at once. */
  overLimit: number;
  /** Packets of connections with reordered packets held, that went by. */
  followers: number;
  peakHeld: number;
  limits: HoldLimits;
}

export interface ReplaySummary {
  input: string;
  output: string;
  format: CaptureFileFormat;
  engine: ReplayEngine;
  seed: number;
  hooks: Hook[];
  packetsIn: number;
  packetsOut: number;
  dropped: number;
  changed: number;
  /** Packets written without running the rules, and why (see docs/replay.md). */
  notRun: {
    /** Shorter than an Ethernet header: no hook sees such a frame. */
    tooShort: number;
    /** At tc: an IPv4 or IPv6 frame cut inside its fixed IP header, which no skb at tc can be. */
    cutIpHeader: number;
    /** --engine kernel: frames BPF_PROG_TEST_RUN refused (tc frames over 3712 bytes). */
    kernelRefused: number;
  };
  /** Present when some rule holds packets (delay, reorder). */
  held?: HoldSummary;
  /** Per rule, for compiled rules; empty for a program from an object. */
  rules: RuleSummary[];
  /** A program from an object (replayObject): what it did, in place of per-rule counters. */
  program?: ObjectProgramSummary;
}

function isDrop(hook: Hook, retval: number): boolean {
  // XDP_ABORTED (0) drops too; TC_ACT_SHOT is 2. Compiled programs return only pass/drop/none verdicts.
  return hook === 'xdp' ? retval === 0 || retval === 1 : retval === 2;
}

interface Stage {
  hook: Hook;
  runner: ProgramRunner;
  seen: number;
  changed: Float64Array;
  /** The stage's `delay` and `reorder` side, when its rules hold packets. */
  hold?: StageHold;
}

/**
 * One packet on its way through the stages: the input it came from (to tell whether it left
 * changed) and what earlier stages left on it. Packets straight from the capture share one,
 * reset per packet; a held packet carries its own.
 */
interface Passage {
  inBytes: Uint8Array;
  inOff: number;
  inLen: number;
  /** The input's wire length minus its captured length. */
  wireExtra: number;
  /** Rules of stages before `from` that acted on it, as (stage, rule) pairs. */
  acted: number[];
  /** Comment parts from holds (delayed, reordered, over the limit). */
  notes: string[];
  /** Whether some stage ran its program on it. */
  ran: boolean;
  /**
   * Capture time (ns after the first packet) of this passage through the stages, and the
   * timestamp it is written with. (Fields, not arguments of passOn: a double passed to a
   * function that is not inlined is boxed, an allocation per packet.)
   */
  relNs: number;
  tsSec: number;
  tsNsec: number;
  /** Whether its bytes may differ from the input's (some stage's program wrote to it, or it was held). */
  wrote: boolean;
  /**
   * Where its record starts in inBytes when the writer would write that record again byte for
   * byte if the packet leaves unchanged (pcap to pcap, see rawRecords); else -1.
   */
  record: number;
}

/**
 * Whether buf[off, off + len) is the passage's input, byte for byte, knowing that only
 * [writtenLow, writtenHigh) of it may differ (writtenHigh Infinity: any of it).
 */
function sameInput(buf: Uint8Array, off: number, len: number, p: Passage, writtenLow: number, writtenHigh: number): boolean {
  if (writtenHigh === Infinity || len !== p.inLen) return sameBytes(buf, off, len, p.inBytes, p.inOff, p.inLen);
  if (writtenLow >= writtenHigh) return true;
  const n = writtenHigh - writtenLow;
  return sameBytes(buf, off + writtenLow, n, p.inBytes, p.inOff + writtenLow, n);
}

/** A copy of bytes[off, off + len): Uint8Array's slice, since a Buffer's slice is a view (and the reader's buffer is reused). */
const copyOf = (bytes: Uint8Array, off: number, len: number): Uint8Array => Uint8Array.prototype.slice.call(bytes, off, off + len);

/** Where replay's VM clock starts: one day (see the packet loop). */
const CLOCK_START_NS = 86_400e9;

/** Compiles the groups, replays the capture through them, and writes the packets that leave. */
/**
 * A compiled program that stops in the VM (it reads what the kernel's verifier would refuse)
 * is netmangle's fault, not the capture's: said so, with the packet it stopped on.
 */
function programFault(err: unknown, c: CompiledProgram, packet: number, input: string): unknown {
  if (!(err instanceof VmError)) return err;
  const rules = c.rules.length === 1 ? `rule "${c.rules[0]!.text}"` : `${c.rules.length} rules`;
  return new NetmangleError(`the program compiled from the ${c.hook} ${rules} stopped in the VM on packet ${packet} of ${input}: ${err.message}`, {
    hint: 'a netmangle bug (the kernel would refuse this program too): please report it with the rules', cause: err,
  });
}

export async function replayCapture(opts: ReplayOptions): Promise<ReplaySummary> {
  const format = opts.format ?? formatForPath(opts.output);
  if (opts.groups.length === 0) throw new UsageError('no rules to replay');
  if (sameFile(opts.input, opts.output)) throw new UsageError(`the output ${opts.output} is the input capture; write to another file`);
  // The hold plan lives beside the live delay line, whose module loads the kernel's bindings: only when needed.
  const holdPlan = opts.groups.some(groupHolds) ? (await import('../live/index.js')).holdPlan : undefined;
  const holds = opts.groups.map((g, i) => (holdPlan ? StageHold.of(g, holdPlan(g), holdSeed(opts.seed, i), opts.maxHeld) : undefined));
  const compiled: CompiledProgram[] = opts.groups.map((g, i) => compileGroup(g, { seed: opts.seed, lookupField, hold: holds[i]?.targets }));
  const reader = openCaptureSync(opts.input);
  const summary: ReplaySummary = {
    input: opts.input, output: opts.output, format, engine: opts.engine, seed: opts.seed, hooks: opts.groups.map((g) => g.hook),
    packetsIn: 0, packetsOut: 0, dropped: 0, changed: 0, notRun: { tooShort: 0, cutIpHeader: 0, kernelRefused: 0 }, rules: [],
  };
  const stages: Stage[] = [];
  let unpin: (() => void) | undefined;
  let writer: CaptureWriter | undefined;
  try {
    if (opts.engine === 'kernel') {
      // Every test run on one CPU, so the per-CPU PRNG state advances as the VM's does.
      const { pinThread } = await import('../kernel/affinity.js');
      unpin = pinThread().restore;
    }
    for (const [i, c] of compiled.entries()) {
      const runner = opts.engine === 'kernel' ? await KernelRunner.open(c) : new VmRunner(c, opts.engine === 'interp' ? 'interpreter' : 'jit');
      const hold = holds[i];
      hold?.useHeldMap(runner.heldMap());
      stages.push({ hook: c.hook, runner, seen: 0, changed: new Float64Array(c.rules.length), hold });
    }
    writer = openReplayWriter(reader, opts.output, format);
    const out = writer;
    const comments = format === 'pcapng' && opts.comments !== false;
    const frames = new EthernetFrames(reader.name);
    // Rules that acted on the current packet, per stage: indices and counts, reused.
    const acted = stages.map((s) => new Int32Array(s.runner.compiled.rules.length));
    const actedN = new Int32Array(stages.length);
    const progressEvery = 4096;
    const anyHold = stages.some((s) => s.hold);

    // The VM's clock (bpf_ktime_get_ns: limit, for, start-after) is the capture's: nanoseconds
    // since the first packet, plus a day, so that it never reads 0 nor goes below 0 for
    // packets a little out of order. The hold queues run on the same clock (without the day).
    let firstSec: number | undefined, firstNsec = 0;
    const ts = { sec: 0, nsec: 0 };
    /** Sets `ts` to the capture time `relNs` after the first packet. */
    const timestampOf = (relNs: number): typeof ts => {
      const total = firstNsec + Math.round(relNs);
      const secs = Math.floor(total / 1e9);
      ts.sec = firstSec! + secs;
      ts.nsec = total - secs * 1e9;
      return ts;
    };

    /**
     * Runs a frame through stages [from, n) at capture time p.relNs (written with timestamp
     * p.tsSec.p.tsNsec): it leaves (written), is dropped, or is held by a stage (written when it
     * leaves the hold, then going on through the stages after that one).
     */
    const passOn = (frame: Uint8Array, frameOff: number, frameLen: number, from: number, p: Passage): void => {
      const relNs = p.relNs, tsSec = p.tsSec, tsNsec = p.tsNsec;
      const ktime = Math.max(0, CLOCK_START_NS + relNs);
      let buf = frame, off = frameOff, len = frameLen;
      let wrote = p.wrote;
      // The part of the frame stages' writes may have changed (see ProgramRunner.writtenLow).
      let writtenLow = wrote ? 0 : Infinity, writtenHigh = wrote ? Infinity : 0;
      let dropped = false;
      let followed: Array<{ stage: number; flow: string }> | undefined;
      for (let s = from; s < stages.length; s++) {
        actedN[s] = 0;
        const stage = stages[s]!;
        if (stage.hook !== 'xdp' && !tcCanSee(buf, off, len)) {
          summary.notRun.cutIpHeader++;
          continue;
        }
        const runner = stage.runner;
        let rv: number | undefined;
        try {
          rv = runner.run(buf, off, len, ktime);
        } catch (err) {
          throw programFault(err, runner.compiled, summary.packetsIn, opts.input);
        }
        if (rv === undefined) {
          summary.notRun.kernelRefused++;
          continue;
        }
        p.ran = true;
        stage.seen++;
        // `duplicate`'s copies leave before the original (bpf_clone_redirect sends at once),
        // as the rule left them; they do not meet later stages.
        const copies = runner.clones;
        if (copies !== undefined && copies.length > 0) {
          for (const c of copies) {
            out.writeBytes(c.packet, 0, c.packet.length, tsSec, tsNsec, Math.max(c.packet.length, p.wireExtra + c.packet.length), 0, comments ? 'netmangle: duplicate (a copy of the next packet)' : undefined);
            summary.packetsOut++;
          }
        }
        const n = (actedN[s] = runner.actedSinceLast(acted[s]!));
        if (isDrop(stage.hook, rv)) {
          dropped = true;
          break;
        }
        if (runner.wrote) {
          wrote = true;
          if (runner.writtenLow < writtenLow) writtenLow = runner.writtenLow;
          if (runner.writtenHigh > writtenHigh) writtenHigh = runner.writtenHigh;
          buf = runner.outBytes;
          off = runner.outOffset;
          len = runner.outLength;
        }
        const hold = stage.hold;
        if (hold === undefined) continue;
        const target = hold.targetOf(runner, rv, n > 0 ? acted[s]![n - 1]! : -1);
        if (target === undefined) continue;
        if (target === 'follower') {
          // Sent on at once; the held packets of its connection it frees leave right after it.
          (followed ??= []).push({ stage: s, flow: hold.flowOf(buf.subarray(off, off + len)) });
          continue;
        }
        const rule = acted[s]![n - 1]!;
        const spec = hold.specs[target.spec]!;
        const copy = copyOf(buf, off, len);
        const flow = spec.kind === 'reorder' ? hold.flowOf(copy) : undefined;
        const pairs = p.acted.slice();
        for (let t = from; t <= s; t++) for (let k = 0; k < actedN[t]!; k++) pairs.push(t, acted[t]![k]!);
        const item: HeldPacket = {
          frame: copy, original: copyOf(p.inBytes, p.inOff, p.inLen), wireExtra: p.wireExtra, acted: pairs, notes: p.notes.slice(), rule, flow,
        };
        if (hold.queue.hold(item, len, spec, relNs, flow)) {
          hold.counts[spec.kind === 'delay' ? 'delayed' : 'reordered'][rule]!++;
          // It went by an earlier stage's line as a follower before this stage held it.
          if (followed) freeFollowed(followed, relNs, tsSec, tsNsec);
          return;
        }
        // The line is full: the packet goes on at once, counted (and off its connection's count).
        hold.counts.overLimit[rule]!++;
        hold.left(spec, flow);
        if (comments) p.notes.push(overLimitNote(runner.compiled.rules[rule]!.name, spec));
      }
      if (dropped) {
        summary.dropped++;
      } else {
        let comment: string | undefined;
        const parts: string[] | undefined = comments && p.notes.length > 0 ? [] : undefined;
        if (p.ran && wrote && !sameInput(buf, off, len, p, writtenLow, writtenHigh)) {
          summary.changed++;
          const names: string[] | undefined = comments ? [] : undefined;
          for (let k = 0; k < p.acted.length; k += 2) {
            const stage = stages[p.acted[k]!]!;
            stage.changed[p.acted[k + 1]!]!++;
            names?.push(stage.runner.compiled.rules[p.acted[k + 1]!]!.name);
          }
          for (let s = from; s < stages.length; s++) {
            const stage = stages[s]!;
            for (let k = 0; k < actedN[s]!; k++) {
              const r = acted[s]![k]!;
              stage.changed[r]!++;
              names?.push(stage.runner.compiled.rules[r]!.name);
            }
          }
          if (names) {
            const before = p.inBytes.subarray(p.inOff, p.inOff + p.inLen);
            const after = buf.subarray(off, off + len);
            const changes = changedFields(before, after);
            const what = changes.length > 0 ? formatChanges(changes) : `bytes ${differingBytes(before, after).join(', ')} changed`;
            comment = `${names.length > 0 ? names.join(', ') : 'netmangle'}: ${what}`;
          }
        }
        if (parts) {
          if (comment !== undefined) parts.push(comment);
          parts.push(...p.notes);
          comment = parts.join('; ');
        }
        if (!wrote && p.record >= 0 && comment === undefined) {
          // Left alone: the input's own record, gathered with its unchanged neighbours into one copy.
          out.appendRecords(p.inBytes, p.record, p.inOff + p.inLen, 1);
        } else {
          // The wire length grows or shrinks with the frame.
          const origLen = Math.max(len, p.wireExtra + len);
          out.writeBytes(buf, off, len, tsSec, tsNsec, origLen, 0, comment);
        }
        summary.packetsOut++;
      }
      if (followed) freeFollowed(followed, relNs, tsSec, tsNsec);
    };

    /**
     * The held packets of earlier stages' connections a packet was the Nth follower of leave
     * right after it. (Not a closure inside passOn: one made per packet costs an allocation.)
     */
    const freeFollowed = (followed: Array<{ stage: number; flow: string }>, relNs: number, tsSec: number, tsNsec: number): void => {
      for (const f of followed) {
        const hold = stages[f.stage]!.hold!;
        for (const r of hold.queue.follow(f.flow, relNs)) leave(f.stage, r, 'overtaken', relNs, tsSec, tsNsec);
      }
    };

    /** A held packet leaves stage s's hold at relNs: off its connection's count, on through the later stages. */
    const leave = (s: number, r: Release<HeldPacket>, how: 'due' | 'overtaken', relNs: number, tsSec: number, tsNsec: number): void => {
      const hold = stages[s]!.hold!;
      hold.left(r.spec, r.flow);
      const item = r.item;
      if (comments) item.notes.push(holdNote(stages[s]!.runner.compiled.rules[item.rule]!.name, r, how));
      passOn(item.frame, 0, item.frame.length, s + 1, {
        relNs, tsSec, tsNsec, inBytes: item.original, inOff: 0, inLen: item.original.length, wireExtra: item.wireExtra, acted: item.acted, notes: item.notes, ran: true, wrote: true, record: -1,
      });
    };

    /** Every held packet due at or before relNs leaves, in release order across the stages. */
    const releaseDue = (relNs: number): void => {
      for (;;) {
        let s = -1, next = Number.POSITIVE_INFINITY;
        for (let k = 0; k < stages.length; k++) {
          const at = stages[k]!.hold?.queue.nextNs();
          if (at !== undefined && at < next) {
            next = at;
            s = k;
          }
        }
        if (s < 0 || next > relNs) return;
        for (const r of stages[s]!.hold!.queue.due(next)) {
          const t = timestampOf(r.releaseNs);
          leave(s, r, 'due', r.releaseNs, t.sec, t.nsec);
        }
      }
    };

    const passage: Passage = { inBytes: new Uint8Array(0), inOff: 0, inLen: 0, wireExtra: 0, acted: [], notes: [], ran: false, wrote: false, record: -1, relNs: 0, tsSec: 0, tsNsec: 0 };
    // Whether the writer encodes a record of an unchanged packet as the reader found it: pcap to
    // pcap, both little-endian with the same timestamp unit (openReplayWriter keeps it), Ethernet.
    const pcapOut = out instanceof PcapWriter ? out : undefined;
    const rawRecords = pcapOut !== undefined && reader.format === 'pcap' && reader.byteOrder === 'little'
      && pcapOut.byteOrder === 'little' && pcapOut.nanosecond === reader.nanosecond && pcapOut.linkType === LINKTYPE_ETHERNET;
    reader.forEach((pkt) => {
      summary.packetsIn++;
      if (firstSec === undefined) {
        firstSec = pkt.tsSec;
        firstNsec = pkt.tsNsec;
      }
      const relNs = (pkt.tsSec - firstSec) * 1e9 + (pkt.tsNsec - firstNsec);
      if (anyHold) releaseDue(relNs);
      // The frame is bytes[off, off + len): the reader's buffer for Ethernet, else a converted copy.
      frames.of(pkt);
      const p = passage;
      p.inBytes = frames.bytes;
      p.inOff = frames.offset;
      p.inLen = frames.length;
      p.wireExtra = pkt.origLen - frames.length;
      p.ran = false;
      p.wrote = false;
      // Per packet: an Ethernet frame (not converted), whole on the wire (origLen ≥ caplen), within
      // the writer's snapshot length, with a sub-second value the writer takes as it is.
      p.record = rawRecords && frames.bytes === pkt.bytes && pkt.origLen >= pkt.caplen && pkt.caplen <= pcapOut!.snaplen
        && pkt.tsNsec <= 0xffffffff ? pkt.offset - 16 : -1;
      if (p.notes.length > 0) p.notes = [];
      if (p.inLen < 14) {
        summary.notRun.tooShort++;
        out.writeBytes(p.inBytes, p.inOff, p.inLen, pkt.tsSec, pkt.tsNsec, Math.max(p.inLen, pkt.origLen), 0, undefined);
        summary.packetsOut++;
      } else {
        p.relNs = relNs;
        p.tsSec = pkt.tsSec;
        p.tsNsec = pkt.tsNsec;
        passOn(p.inBytes, p.inOff, p.inLen, 0, p);
      }
      if (opts.onProgress && summary.packetsIn % progressEvery === 0) opts.onProgress(pkt.fileOffset, summary.packetsIn);
    }, rawRecords ? () => out.commitRecords() : undefined);
    // The end of the capture: what is still held leaves at its release time.
    if (anyHold && firstSec !== undefined) releaseDue(Number.POSITIVE_INFINITY);
  } finally {
    try {
      if (writer) await writer.close();
    } finally {
      for (const s of stages) {
        const counters = s.runner.counters();
        const hold = s.hold;
        s.runner.compiled.rules.forEach((r, i) => {
          summary.rules.push({
            name: r.name, hook: s.hook, dev: s.runner.compiled.dev, seen: s.seen,
            matched: counters[i]!.matched, acted: counters[i]!.acted, changed: s.changed[i]!, dropped: counters[i]!.dropped,
            ...(hold ? { delayed: hold.counts.delayed[i]!, reordered: hold.counts.reordered[i]!, overLimit: hold.counts.overLimit[i]! } : {}),
          });
        });
        if (hold) {
          const q = hold.queue.stats;
          const h = (summary.held ??= { delayed: 0, reordered: 0, overtaken: 0, timedOut: 0, overLimit: 0, followers: 0, peakHeld: 0, limits: opts.maxHeld ?? DEFAULT_HOLD_LIMITS });
          h.delayed += q.delayed;
          h.reordered += q.reordered;
          h.overtaken += q.overtaken;
          h.timedOut += q.timedOut;
          h.overLimit += q.overLimit;
          h.followers += q.followers;
          h.peakHeld = Math.max(h.peakHeld, q.peakHeld);
        }
        s.runner.close();
      }
      unpin?.();
      reader.close();
    }
  }
  return summary;
}

// ---------------------------------------------------------------- the summary as text

/** The per-rule table printed at the end of a replay. */
export function formatSummaryTable(s: ReplaySummary, opts: { seedChosen?: boolean } = {}): string[] {
  const p = s.program;
  const rows: string[][] = p
    ? [['program', 'hook', 'seen', 'changed', 'dropped'], [`${p.name} (section ${p.section})`, p.hook, String(p.seen), String(p.changed), String(p.dropped)]]
    : [['rule', 'hook', 'seen', 'matched', 'changed', 'dropped', ...(s.held ? ['delayed', 'reordered'] : [])]];
  for (const r of s.rules) {
    rows.push([r.name, r.hook, String(r.seen), String(r.matched), String(r.changed), String(r.dropped), ...(s.held ? [String(r.delayed ?? 0), String(r.reordered ?? 0)] : [])]);
  }
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((r) => r[col]!.length)));
  const lines = rows.map((r) => r.map((cell, col) => (col >= 2 ? cell.padStart(widths[col]!) : cell.padEnd(widths[col]!))).join('  ').trimEnd());
  const chosen = opts.seedChosen ? ' (chosen at random; pass --seed to repeat)' : '';
  let seedText = `seed ${s.seed}${chosen}`;
  if (p) {
    const verdicts = Object.entries(p.verdicts).map(([v, n]) => `${v} ${n}`).join(', ');
    if (verdicts) lines.push(`verdicts: ${verdicts}`);
    // The seed is the VM's bpf_get_prandom_u32's (netmangle build's objects carry their own).
    if (!p.callsPrandom) seedText = '';
    else if (s.engine === 'kernel') seedText = `bpf_get_prandom_u32 from the kernel (not repeatable), CPU ${p.cpu}`;
    else seedText = `bpf_get_prandom_u32 seed ${s.seed}${chosen}`;
  }
  lines.push(`${s.packetsIn} packets in, ${s.packetsOut} out (${s.changed} changed), ${s.dropped} dropped; engine ${s.engine}${seedText ? `, ${seedText}` : ''}`);
  const h = s.held;
  if (h) {
    const limit = `${h.limits.packets} packets / ${formatBytes(h.limits.bytes)}`;
    lines.push(`held: ${h.delayed} delayed, ${h.reordered} reordered (${h.overtaken} overtaken, ${h.timedOut} by timeout), `
      + `${h.overLimit} over the limit of ${limit} (sent on at once); at most ${h.peakHeld} held at once`);
  }
  const notRun = s.notRun.tooShort + s.notRun.cutIpHeader + s.notRun.kernelRefused;
  if (notRun > 0) {
    const parts = [
      s.notRun.tooShort && `${s.notRun.tooShort} shorter than an Ethernet header`,
      s.notRun.cutIpHeader && `${s.notRun.cutIpHeader} cut inside the IP header (no tc hook sees such a frame)`,
      s.notRun.kernelRefused && `${s.notRun.kernelRefused} refused by the kernel's test run (tc frames over 3712 bytes)`,
    ].filter(Boolean);
    lines.push(`passed through without running the ${p ? 'program' : 'rules'}: ${parts.join(', ')}`);
  }
  return lines;
}

function formatBytes(n: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  return `${n} bytes`;
}
