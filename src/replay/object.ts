/**
 * Offline replay of one program from a BPF object (clang's, or `netmangle build`'s): the same
 * capture-in, capture-out replay as for compiled rules (src/replay/index.ts), with the program
 * and its maps taken from the object. The VM engines create the object's maps in the VM (global
 * data with its initial bytes) and run the linked instructions; the kernel engine loads the
 * program as `netmangle load` does and runs it with BPF_PROG_TEST_RUN on one pinned CPU.
 *
 * The program is not netmangle's, so there are no per-rule counters: the summary counts what
 * the program did to the packets (seen, changed, dropped, and its return values by name).
 */
import type { MapRef } from '../bpf/asm.js';
import type { Insn } from '../bpf/insn.js';
import { BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE, LD_IMM64 } from '../bpf/opcodes.js';
import type { BpfObject, LinkedProgram, ObjectMap, ObjectProgram } from '../elf/object.js';
import { NetmangleError, UsageError } from '../errors.js';
import { openCaptureSync, type CaptureWriter } from '../pcap/index.js';
import type { Hook } from '../rules/ast.js';
import { createMap as createVmMap, Vm, VmError, type VmMap, type VmMapType } from '../vm/index.js';
import { EthernetFrames, formatForPath, openReplayWriter, sameBytes, sameFile, tcCanSee, type CaptureFileFormat } from './capture-io.js';
import { changedFields, differingBytes, formatChanges } from './fields.js';
import type { ReplayEngine, ReplaySummary } from './index.js';
import { REPLAY_CPU } from './runner.js';

const BPF_CALL_CODE = 0x85;
const HELPER_GET_PRANDOM_U32 = 7;
const EINVAL = 22;

// ---------------------------------------------------------------- which program, which hook

/** The hook a program's section implies, if it implies one. */
export function hookOfSection(section: string): Hook | undefined {
  if (section === 'xdp' || section.startsWith('xdp/') || section === 'xdp.frags' || section.startsWith('xdp.frags/')) return 'xdp';
  if (section === 'tcx/ingress' || section === 'tc/ingress') return 'ingress';
  if (section === 'tcx/egress' || section === 'tc/egress') return 'egress';
  return undefined;
}

/**
 * The hook `program` is replayed at: the one its section names (`xdp`, `tcx/ingress` ...), or
 * `hook` (--hook) for sections that fit both tc hooks (`tc`, `classifier`). Refuses a --hook
 * that contradicts the section or the program type.
 */
export function hookForProgram(program: ObjectProgram, hook: Hook | undefined): Hook {
  const named = hookOfSection(program.section);
  const what = `program ${program.name} (section ${program.section})`;
  if (program.type === undefined) {
    throw new UsageError(`${what} has no program type replay knows; replay runs xdp and tc programs`);
  }
  if (program.type === 'xdp') {
    if (hook !== undefined && hook !== 'xdp') throw new UsageError(`${what} is an xdp program; --hook ${hook} needs a tc program`);
    return 'xdp';
  }
  if (hook === 'xdp') throw new UsageError(`${what} is a ${program.type} program; --hook xdp needs an xdp program`);
  if (named !== undefined && hook !== undefined && hook !== named) {
    throw new UsageError(`${what} is for tc ${named}; drop --hook ${hook} or choose another program with --section`);
  }
  const chosen = hook ?? named;
  if (chosen === undefined) {
    throw new UsageError(`${what} runs at tc ingress or egress; say which with --hook ingress or --hook egress`);
  }
  return chosen;
}

// ---------------------------------------------------------------- verdicts

const XDP_VERDICTS = ['XDP_ABORTED', 'XDP_DROP', 'XDP_PASS', 'XDP_TX', 'XDP_REDIRECT'];
const TC_VERDICTS: Record<number, string> = {
  [-1]: 'TC_ACT_UNSPEC', 0: 'TC_ACT_OK', 1: 'TC_ACT_RECLASSIFY', 2: 'TC_ACT_SHOT', 3: 'TC_ACT_PIPE',
  4: 'TC_ACT_STOLEN', 5: 'TC_ACT_QUEUED', 6: 'TC_ACT_REPEAT', 7: 'TC_ACT_REDIRECT', 8: 'TC_ACT_TRAP',
};

/** The name of a program's return value at `hook` ("XDP_PASS", "TC_ACT_SHOT", or the number). */
export function verdictName(hook: Hook, retval: number): string {
  const v = retval | 0;
  return (hook === 'xdp' ? XDP_VERDICTS[v] : TC_VERDICTS[v]) ?? String(v);
}

/**
 * Whether the packet is gone after this return value: XDP_ABORTED, XDP_DROP and values XDP does
 * not know (the kernel drops those); at tc, TC_ACT_SHOT and the verdicts by which the packet is
 * consumed (STOLEN, QUEUED, TRAP). Redirected and XDP_TX packets leave, so they are written.
 */
export function isDropVerdict(hook: Hook, retval: number): boolean {
  const v = retval | 0;
  if (hook === 'xdp') return v < 0 || v === 0 || v === 1 || v > 4;
  return v === 2 || v === 4 || v === 5 || v === 8;
}

/** Verdicts that send a packet on without changing the usual path: no comment needed for them. */
function isPlainPass(hook: Hook, retval: number): boolean {
  const v = retval | 0;
  return hook === 'xdp' ? v === 2 : v === 0 || v === -1 || v === 3 || v === 1 || v === 6 || !(v in TC_VERDICTS);
}

// ---------------------------------------------------------------- runners

/** One program of an object run packet after packet, in the VM or in the kernel. */
export interface ObjectRunner {
  readonly linked: LinkedProgram;
  /** The program's return value, or undefined when the engine cannot run this frame (kernel test-run limits). */
  run(bytes: Uint8Array, offset: number, length: number): number | undefined;
  /** The packet as the last run left it: outBytes[outOffset, outOffset + outLength). */
  readonly outBytes: Uint8Array;
  readonly outOffset: number;
  readonly outLength: number;
  /** Whether the last run may have changed the packet (false: certainly not; see ProgramRunner.wrote). */
  readonly wrote: boolean;
  close(): void;
}

/** The VM's name for an object's map type; per-CPU hashes become plain ones (the VM is one CPU). */
function vmMapType(spec: ObjectMap): VmMapType | undefined {
  switch (spec.type) {
    case 'array': return 'array';
    case 'percpu_array': return 'percpu_array';
    case 'hash': case 'percpu_hash': return 'hash';
    case 'lru_hash': case 'lru_percpu_hash': return 'lru_hash';
    default: return undefined;
  }
}

/**
 * The linked instructions with their map references in the form the VM reads: the linker
 * leaves each 64-bit load zeroed with the reference in `mapRefs` (the kernel loader fills it
 * in); the VM takes the kind from the instruction and a value's offset from its upper half.
 */
function withMapKinds(insns: readonly Insn[], mapRefs: readonly MapRef[]): Insn[] {
  const out = insns.map((i) => ({ ...i }));
  for (const r of mapRefs) {
    const insn = out[r.index]!;
    if (insn.code !== LD_IMM64) continue;
    insn.src = r.kind === 'value' ? BPF_PSEUDO_MAP_VALUE : BPF_PSEUDO_MAP_FD;
    insn.imm = 0;
    insn.imm2 = r.kind === 'value' ? r.offset : 0;
  }
  return out;
}

/** The program and its maps in the VM, as CPU REPLAY_CPU; bpf_get_prandom_u32 from the VM's generator seeded with `seed`. */
export class ObjectVmRunner implements ObjectRunner {
  private readonly vm: Vm;
  readonly maps: Record<string, VmMap> = {};

  constructor(readonly object: BpfObject, readonly linked: LinkedProgram, engine: 'jit' | 'interpreter', seed: number) {
    const where = `${object.file}: program ${linked.name}`;
    if (linked.type !== 'xdp' && linked.type !== 'sched_cls') {
      throw new UsageError(`${where} is a ${linked.type} program; the VM runs xdp and sched_cls (tc) programs`);
    }
    for (const name of linked.usesMaps) {
      const spec = object.maps.get(name)!;
      const type = vmMapType(spec);
      if (type === undefined) {
        throw new UsageError(`${where} uses map ${name} of type ${spec.type}, which the VM does not have; replay it with --engine kernel (needs root)`);
      }
      const map = createVmMap({ type, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries, name, cpus: 1 });
      if (spec.initial) map.update(0, spec.initial);
      this.maps[name] = map;
    }
    try {
      this.vm = new Vm(withMapKinds(linked.insns, linked.mapRefs), {
        programType: linked.type, maps: this.maps, mapRefs: linked.mapRefs, engine, cpu: REPLAY_CPU, seed,
      });
    } catch (err) {
      if (err instanceof VmError) {
        // The VM's own hint blames the program; here the program is the kernel's to judge.
        throw new NetmangleError(`${where} cannot run in the VM: ${err.message}; replay it with --engine kernel (needs root)`, { exitCode: 2, cause: err });
      }
      throw err;
    }
  }

  run(bytes: Uint8Array, offset: number, length: number): number {
    return this.vm.runAt(bytes, offset, length).retval | 0;
  }

  get outBytes(): Uint8Array {
    return this.vm.machine.pkt;
  }

  get outOffset(): number {
    return this.vm.machine.pktStart;
  }

  get outLength(): number {
    return this.vm.machine.pktEnd - this.vm.machine.pktStart;
  }

  get wrote(): boolean {
    return this.vm.machine.written;
  }

  close(): void {}
}

/**
 * The program loaded into the kernel with its maps (as `netmangle load` creates them) and run
 * with BPF_PROG_TEST_RUN. Needs root; open it inside a replay that has pinned its thread.
 */
export class ObjectKernelRunner implements ObjectRunner {
  private out: Uint8Array = new Uint8Array(0);
  readonly outOffset = 0;
  readonly wrote = true;

  private constructor(
    readonly linked: LinkedProgram,
    private readonly loaded: import('../elf/load.js').LoadedObjectProgram,
    private readonly testRun: typeof import('../kernel/index.js').testRun,
  ) {}

  static async open(object: BpfObject, name: string): Promise<ObjectKernelRunner> {
    if (typeof process.getuid === 'function' && process.getuid() !== 0) {
      throw new NetmangleError('--engine kernel needs root (CAP_BPF) to load the program and run it with BPF_PROG_TEST_RUN', {
        hint: 'run it with sudo, or use --engine jit (the default) or interp, which need no privileges',
        exitCode: 2,
      });
    }
    const { loadObjectProgram } = await import('../elf/load.js');
    const { testRun } = await import('../kernel/index.js');
    const loaded = loadObjectProgram(object, name);
    return new ObjectKernelRunner(loaded.linked, loaded, testRun);
  }

  run(bytes: Uint8Array, offset: number, length: number): number | undefined {
    let r;
    try {
      r = this.testRun(this.loaded.prog, { data: offset === 0 && length === bytes.length ? bytes : bytes.subarray(offset, offset + length) });
    } catch (err) {
      if ((err as { operation?: string }).operation === 'test-run' && (err as { errno?: number }).errno === EINVAL) return undefined;
      throw err;
    }
    this.out = r.data;
    return r.retval | 0;
  }

  get outBytes(): Uint8Array {
    return this.out;
  }

  get outLength(): number {
    return this.out.length;
  }

  close(): void {
    this.loaded.close();
  }
}

// ---------------------------------------------------------------- the replay

export interface ObjectReplayOptions {
  object: BpfObject;
  /** The program's function name (see chooseProgram in src/elf/load.ts). */
  program: string;
  /** Where the program runs (see hookForProgram). */
  hook: Hook;
  /** Seed of the VM's bpf_get_prandom_u32 (the kernel's is its own, not seedable). */
  seed: number;
  engine: ReplayEngine;
  input: string;
  output: string;
  format?: CaptureFileFormat;
  /** Comment changed (and redirected or bounced) packets in a pcapng output (default true). */
  comments?: boolean;
  onProgress?: (bytesRead: number, packets: number) => void;
}

export interface ObjectProgramSummary {
  /** The object file. */
  file: string;
  /** The program's function name. */
  name: string;
  section: string;
  hook: Hook;
  /** Packets the program ran on. */
  seen: number;
  changed: number;
  dropped: number;
  /** How often the program returned each value, by name (XDP_PASS, TC_ACT_OK ...). */
  verdicts: Record<string, number>;
  /** The program calls bpf_get_prandom_u32: seeded in the VM, truly random in the kernel. */
  callsPrandom: boolean;
  /** --engine kernel: the CPU every test run ran on. */
  cpu?: number;
}

/** Whether the program calls the helper `id`. */
function callsHelper(insns: readonly Insn[], id: number): boolean {
  return insns.some((i) => i.code === BPF_CALL_CODE && i.src === 0 && i.imm === id);
}

/** Replays the capture through one program of an object and writes the packets that leave. */
export async function replayObject(opts: ObjectReplayOptions): Promise<ReplaySummary> {
  const format = opts.format ?? formatForPath(opts.output);
  if (sameFile(opts.input, opts.output)) throw new UsageError(`the output ${opts.output} is the input capture; write to another file`);
  const chosen = opts.object.programs.find((p) => p.name === opts.program);
  if (!chosen) throw new UsageError(`${opts.object.file} has no program ${opts.program}`);
  const hook = opts.hook;
  const linked = opts.object.link(opts.program);
  const program: ObjectProgramSummary = {
    file: opts.object.file, name: linked.name, section: linked.section, hook,
    seen: 0, changed: 0, dropped: 0, verdicts: {}, callsPrandom: callsHelper(linked.insns, HELPER_GET_PRANDOM_U32),
  };
  const summary: ReplaySummary = {
    input: opts.input, output: opts.output, format, engine: opts.engine, seed: opts.seed, hooks: [hook],
    packetsIn: 0, packetsOut: 0, dropped: 0, changed: 0, notRun: { tooShort: 0, cutIpHeader: 0, kernelRefused: 0 }, rules: [],
    program,
  };
  // The VM refuses a program it cannot run before the capture is opened.
  let runner: ObjectRunner | undefined = opts.engine === 'kernel'
    ? undefined
    : new ObjectVmRunner(opts.object, linked, opts.engine === 'interp' ? 'interpreter' : 'jit', opts.seed);
  let unpin: (() => void) | undefined;
  const reader = openCaptureSync(opts.input);
  let writer: CaptureWriter | undefined;
  const verdictCounts = new Map<number, number>();
  try {
    if (opts.engine === 'kernel') {
      runner = await ObjectKernelRunner.open(opts.object, opts.program);
      // One CPU for every run: per-CPU maps then evolve as in the VM, which runs as CPU 0; CPU 0
      // itself when allowed, so a program that seeds itself from its CPU number (netmangle
      // build's) draws as the VM does.
      const { allowedCpus, pinThread } = await import('../kernel/affinity.js');
      const pinned = pinThread(allowedCpus().includes(REPLAY_CPU) ? REPLAY_CPU : undefined);
      unpin = pinned.restore;
      program.cpu = pinned.cpu;
    }
    writer = openReplayWriter(reader, opts.output, format);
    const out = writer;
    const run: ObjectRunner = runner!;
    const comments = format === 'pcapng' && opts.comments !== false;
    const frames = new EthernetFrames(reader.name);
    const progressEvery = 4096;

    reader.forEach((pkt) => {
      summary.packetsIn++;
      frames.of(pkt);
      const inBytes = frames.bytes, inOff = frames.offset, inLen = frames.length;
      let buf = inBytes, off = inOff, len = inLen;
      let rv: number | undefined;
      let wrote = false;
      if (inLen < 14) {
        summary.notRun.tooShort++;
      } else if (hook !== 'xdp' && !tcCanSee(inBytes, inOff, inLen)) {
        summary.notRun.cutIpHeader++;
      } else {
        try {
          rv = run.run(inBytes, inOff, inLen);
        } catch (err) {
          if (err instanceof VmError) {
            throw new NetmangleError(`${program.file}: program ${program.name} stopped in the VM on packet ${summary.packetsIn}: ${err.message}`, {
              hint: 'the kernel may accept what the VM refuses; compare with --engine kernel (needs root)', cause: err,
            });
          }
          throw err;
        }
        if (rv === undefined) {
          summary.notRun.kernelRefused++;
        } else {
          program.seen++;
          verdictCounts.set(rv, (verdictCounts.get(rv) ?? 0) + 1);
          buf = run.outBytes;
          off = run.outOffset;
          len = run.outLength;
          wrote = run.wrote;
        }
      }
      if (rv !== undefined && isDropVerdict(hook, rv)) {
        summary.dropped++;
        program.dropped++;
      } else {
        let comment: string | undefined;
        const changed = rv !== undefined && wrote && !sameBytes(buf, off, len, inBytes, inOff, inLen);
        if (changed) {
          summary.changed++;
          program.changed++;
        }
        if (comments && rv !== undefined && (changed || !isPlainPass(hook, rv))) {
          const parts: string[] = [];
          if (changed) {
            const before = inBytes.subarray(inOff, inOff + inLen);
            const after = buf.subarray(off, off + len);
            const changes = changedFields(before, after);
            parts.push(changes.length > 0 ? formatChanges(changes) : `bytes ${differingBytes(before, after).join(', ')} changed`);
          }
          if (!isPlainPass(hook, rv)) parts.push(verdictName(hook, rv));
          comment = `${program.name}: ${parts.join(', ')}`;
        }
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
      runner?.close();
      unpin?.();
      reader.close();
      for (const [rv, n] of [...verdictCounts].sort((a, b) => a[0] - b[0])) program.verdicts[verdictName(hook, rv)] = n;
    }
  }
  return summary;
}
