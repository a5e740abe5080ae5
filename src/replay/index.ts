/**
 * Offline replay: every packet of a capture goes through the compiled programs of the hooks
 * chosen, and the packets that leave are written to a new capture (dropped ones gone, changed
 * ones changed, timestamps kept). docs/replay.md describes the choices made here.
 *
 * Memory stays flat: the capture is read and written as a stream, the packet and run objects
 * are reused, and nothing is allocated per packet on the path of a packet that no rule changes.
 */
import { compileGroup, type CompiledProgram } from '../compiler/index.js';
import { UsageError } from '../errors.js';
import type { Hook, RuleGroup } from '../rules/ast.js';
import { lookupField } from '../rules/catalog.js';
import { openCaptureSync, type CaptureWriter } from '../pcap/index.js';
import { EthernetFrames, formatForPath, openReplayWriter, sameBytes, sameFile, tcCanSee, type CaptureFileFormat } from './capture-io.js';
import { changedFields, differingBytes, formatChanges } from './fields.js';
import type { ObjectProgramSummary } from './object.js';
import { KernelRunner, VmRunner, type ProgramRunner, type ReplayEngine } from './runner.js';

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
}

/** Where replay's VM clock starts: one day (see the packet loop). */
const CLOCK_START_NS = 86_400e9;

/** Compiles the groups, replays the capture through them, and writes the packets that leave. */
export async function replayCapture(opts: ReplayOptions): Promise<ReplaySummary> {
  const format = opts.format ?? formatForPath(opts.output);
  if (opts.groups.length === 0) throw new UsageError('no rules to replay');
  if (sameFile(opts.input, opts.output)) throw new UsageError(`the output ${opts.output} is the input capture; write to another file`);
  const compiled: CompiledProgram[] = opts.groups.map((g) => compileGroup(g, { seed: opts.seed, lookupField }));
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
    for (const c of compiled) {
      const runner = opts.engine === 'kernel' ? await KernelRunner.open(c) : new VmRunner(c, opts.engine === 'interp' ? 'interpreter' : 'jit');
      stages.push({ hook: c.hook, runner, seen: 0, changed: new Float64Array(c.rules.length) });
    }
    writer = openReplayWriter(reader, opts.output, format);
    const out = writer;
    const comments = format === 'pcapng' && opts.comments !== false;
    const frames = new EthernetFrames(reader.name);
    // Rules that acted on the current packet, per stage: indices and counts, reused.
    const acted = stages.map((s) => new Int32Array(s.runner.compiled.rules.length));
    const actedN = new Int32Array(stages.length);
    const progressEvery = 4096;

    // The VM's clock (bpf_ktime_get_ns: limit, for, start-after) is the capture's: nanoseconds
    // since the first packet, plus a day, so that it never reads 0 nor goes below 0 for
    // packets a little out of order.
    let firstSec: number | undefined, firstNsec = 0;
    reader.forEach((pkt) => {
      summary.packetsIn++;
      if (firstSec === undefined) {
        firstSec = pkt.tsSec;
        firstNsec = pkt.tsNsec;
      }
      const ktime = Math.max(0, CLOCK_START_NS + (pkt.tsSec - firstSec) * 1e9 + (pkt.tsNsec - firstNsec));
      // The frame is bytes[off, off + len): the reader's buffer for Ethernet, else a converted copy.
      frames.of(pkt);
      const inBytes = frames.bytes, inOff = frames.offset, inLen = frames.length;
      let buf = inBytes, off = inOff, len = inLen;
      let dropped = false;
      let ran = false;
      if (inLen < 14) {
        summary.notRun.tooShort++;
      } else {
        for (let s = 0; s < stages.length; s++) {
          actedN[s] = 0;
          const stage = stages[s]!;
          if (stage.hook !== 'xdp' && !tcCanSee(buf, off, len)) {
            summary.notRun.cutIpHeader++;
            continue;
          }
          const runner = stage.runner;
          const rv = runner.run(buf, off, len, ktime);
          if (rv === undefined) {
            summary.notRun.kernelRefused++;
            continue;
          }
          ran = true;
          stage.seen++;
          // `duplicate`'s copies leave before the original (bpf_clone_redirect sends at once),
          // as the rule left them; they do not meet later stages.
          const copies = runner.clones;
          if (copies !== undefined && copies.length > 0) {
            for (const c of copies) {
              out.writeBytes(c.packet, 0, c.packet.length, pkt.tsSec, pkt.tsNsec, Math.max(c.packet.length, pkt.origLen - inLen + c.packet.length), 0, comments ? 'netmangle: duplicate (a copy of the next packet)' : undefined);
              summary.packetsOut++;
            }
          }
          actedN[s] = runner.actedSinceLast(acted[s]!);
          if (isDrop(stage.hook, rv)) {
            dropped = true;
            break;
          }
          buf = runner.outBytes;
          off = runner.outOffset;
          len = runner.outLength;
        }
      }
      if (dropped) {
        summary.dropped++;
      } else {
        let comment: string | undefined;
        if (ran && !sameBytes(buf, off, len, inBytes, inOff, inLen)) {
          summary.changed++;
          const names: string[] = [];
          for (let s = 0; s < stages.length; s++) {
            const stage = stages[s]!;
            for (let k = 0; k < actedN[s]!; k++) {
              const r = acted[s]![k]!;
              stage.changed[r]!++;
              if (comments) names.push(stage.runner.compiled.rules[r]!.name);
            }
          }
          if (comments) {
            const before = inBytes.subarray(inOff, inOff + inLen);
            const after = buf.subarray(off, off + len);
            const changes = changedFields(before, after);
            const what = changes.length > 0 ? formatChanges(changes) : `bytes ${differingBytes(before, after).join(', ')} changed`;
            comment = `${names.length > 0 ? names.join(', ') : 'netmangle'}: ${what}`;
          }
        }
        // The wire length grows or shrinks with the frame (never, for today's rules).
        const origLen = Math.max(len, pkt.origLen - inLen + len);
        out.writeBytes(buf, off, len, pkt.tsSec, pkt.tsNsec, origLen, 0, comment);
        summary.packetsOut++;
      }
      if (opts.onProgress && summary.packetsIn % progressEvery === 0) opts.onProgress(pkt.fileOffset, summary.packetsIn);
    });
  } finally {
    try {
      if (writer) await writer.close();
    } finally {
      for (const s of stages) {
        const counters = s.runner.counters();
        s.runner.compiled.rules.forEach((r, i) => {
          summary.rules.push({
            name: r.name, hook: s.hook, dev: s.runner.compiled.dev, seen: s.seen,
            matched: counters[i]!.matched, acted: counters[i]!.acted, changed: s.changed[i]!, dropped: counters[i]!.dropped,
          });
        });
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
    : [['rule', 'hook', 'seen', 'matched', 'changed', 'dropped']];
  for (const r of s.rules) rows.push([r.name, r.hook, String(r.seen), String(r.matched), String(r.changed), String(r.dropped)]);
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
