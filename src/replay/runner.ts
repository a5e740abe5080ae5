/**
 * One compiled program run packet after packet, by the VM (JIT or interpreter) or by the
 * kernel (BPF_PROG_TEST_RUN), with the same PRNG state, so that the three engines give the
 * same verdicts and bytes for one seed.
 *
 * The PRNG state lives in the program's per-CPU state map. Replay seeds it as CPU 0's
 * (`compiled.initialState(0)`); the VM runs as CPU 0, and the kernel engine writes CPU 0's
 * initial state into every CPU's slot and pins the calling thread to one CPU for the whole
 * replay, so every draw comes from the one state, advancing exactly as in the VM.
 */
import type { CompiledProgram, RuleCounters } from '../compiler/index.js';
import { readCounters, ruleCounterOffset, STATE_MAP } from '../compiler/index.js';
import { HELD_MAP } from '../compiler/layout.js';
import type { HeldCounts } from '../delay/held.js';
import { NetmangleError } from '../errors.js';

const EINVAL = 22;
import { createMap as createVmMap, Vm, type ArrayMap, type VmMap, type RunResult } from '../vm/index.js';

export type ReplayEngine = 'jit' | 'interp' | 'kernel';
export const REPLAY_ENGINES: readonly ReplayEngine[] = ['jit', 'interp', 'kernel'];

/** The CPU whose PRNG seeding replay uses, whatever CPU actually runs the program. */
export const REPLAY_CPU = 0;

export interface ProgramRunner {
  readonly compiled: CompiledProgram;
  /**
   * Runs the program on `frame` (not modified); returns its return value, or undefined when
   * the engine cannot run this frame (the kernel's test run refuses tc frames over 3712 bytes).
   * `ktimeNs`: what bpf_ktime_get_ns returns in this run (the VM's clock; the kernel's is real).
   */
  run(bytes: Uint8Array, offset?: number, length?: number, ktimeNs?: number): number | undefined;
  /** The packet as the last run left it, as a view (valid until the next run). */
  readonly output: Uint8Array;
  /** The same without a view: outBytes[outOffset, outOffset + outLength). */
  readonly outBytes: Uint8Array;
  readonly outOffset: number;
  readonly outLength: number;
  /**
   * Whether the last run may have changed the packet. False only when it certainly did not
   * (the VM saw no write to it): the output is then the input's own bytes, with no need to
   * compare them.
   */
  readonly wrote: boolean;
  /**
   * When it wrote: the part of the packet it may have changed, [writtenLow, writtenHigh) as
   * offsets in it; 0 and Infinity when that is not known (a helper wrote, the packet moved or
   * changed length). Outside it the packet is its input, byte for byte.
   */
  readonly writtenLow: number;
  readonly writtenHigh: number;
  /**
   * Indices of the rules whose `acted` counter rose since the previous call, written into
   * `into` (reused); returns how many.
   */
  actedSinceLast(into: Int32Array): number;
  /** Per-rule counters so far. */
  counters(): RuleCounters[];
  /**
   * Where the last run's bpf_redirect sent the packet (-1: nowhere); undefined for the kernel,
   * whose test run keeps no record of it.
   */
  readonly redirectIfindex?: number;
  /** The program's HELD_MAP (rules with `reorder`), to take leaving packets off their count. */
  heldMap(): HeldCounts | undefined;
  /** Copies the last run sent (bpf_clone_redirect: `duplicate`), in order; the VM engines only. */
  readonly clones?: ReadonlyArray<{ packet: Uint8Array }>;
  close(): void;
}

/** The program in the VM, its maps created and seeded as CPU REPLAY_CPU's. */
export class VmRunner implements ProgramRunner {
  private readonly vm: Vm;
  private result: RunResult | undefined;
  private readonly state: ArrayMap;
  private readonly stateWords: Uint32Array;
  private readonly lastActed: Float64Array;
  private readonly actedWord: Int32Array;
  private readonly maps: Record<string, VmMap>;

  constructor(readonly compiled: CompiledProgram, engine: 'jit' | 'interpreter') {
    const maps: Record<string, VmMap> = {};
    for (const spec of compiled.maps) {
      maps[spec.name] = createVmMap({ type: spec.type, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries, name: spec.name, cpus: 1 });
    }
    this.maps = maps;
    this.state = maps[STATE_MAP] as ArrayMap;
    this.state.update(0, compiled.initialState(REPLAY_CPU));
    this.vm = new Vm(compiled.insns, { programType: compiled.kind, maps, mapRefs: compiled.mapRefs, engine, cpu: 0 });
    const v = this.state.valueAt(0, 0);
    this.stateWords = new Uint32Array(v.buffer, v.byteOffset, v.byteLength >> 2);
    const n = compiled.rules.length;
    this.lastActed = new Float64Array(n);
    this.actedWord = Int32Array.from({ length: n }, (_, i) => ruleCounterOffset(i, 'acted') >> 2);
  }

  /** Reused for every run (no allocation per packet). */
  private readonly input = { ktimeNs: 0 };

  run(bytes: Uint8Array, offset = 0, length = bytes.length - offset, ktimeNs = 0): number {
    this.input.ktimeNs = ktimeNs;
    const r = this.vm.runAt(bytes, offset, length, this.input);
    this.result = r;
    return r.retval | 0;
  }

  get output(): Uint8Array {
    if (!this.result) throw new Error('no run yet');
    return this.result.packet;
  }

  get outBytes(): Uint8Array {
    return this.vm.machine.pkt;
  }

  get clones(): ReadonlyArray<{ packet: Uint8Array }> {
    return this.vm.machine.clones;
  }

  get redirectIfindex(): number {
    return this.vm.machine.redirectIfindex;
  }

  heldMap(): HeldCounts | undefined {
    return this.maps[HELD_MAP];
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

  get writtenLow(): number {
    return this.vm.machine.writtenLow;
  }

  get writtenHigh(): number {
    return this.vm.machine.writtenHigh;
  }

  actedSinceLast(into: Int32Array): number {
    const w = this.stateWords, last = this.lastActed, at = this.actedWord;
    let k = 0;
    for (let i = 0; i < at.length; i++) {
      const p = at[i]!;
      const v = w[p]! + w[p + 1]! * 4294967296;
      if (v !== last[i]) {
        last[i] = v;
        into[k++] = i;
      }
    }
    return k;
  }

  counters(): RuleCounters[] {
    return readCounters(this.compiled.rules.length, [this.state.valueAt(0, 0)]).rules;
  }

  close(): void {}
}

/**
 * The program in the kernel through BPF_PROG_TEST_RUN. Needs root. Create it with
 * `KernelRunner.open`, inside a replay that has pinned its thread (see pinThread).
 */
export class KernelRunner implements ProgramRunner {
  private out: Uint8Array = new Uint8Array(0);
  private readonly lastActed: Float64Array;

  private constructor(
    readonly compiled: CompiledProgram,
    private readonly loaded: import('../live/index.js').LoadedProgram,
    private readonly testRun: typeof import('../kernel/index.js').testRun,
  ) {
    this.lastActed = new Float64Array(compiled.rules.length);
  }

  static async open(compiled: CompiledProgram): Promise<KernelRunner> {
    if (typeof process.getuid === 'function' && process.getuid() !== 0) {
      throw new NetmangleError('--engine kernel needs root (CAP_BPF) to load the program and run it with BPF_PROG_TEST_RUN', {
        hint: 'run it with sudo, or use --engine jit (the default) or interp, which need no privileges',
        exitCode: 2,
      });
    }
    const { loadCompiled } = await import('../live/index.js');
    const { testRun } = await import('../kernel/index.js');
    const loaded = loadCompiled(compiled);
    try {
      // Every CPU starts from CPU REPLAY_CPU's state: the pinned CPU then draws as the VM does.
      loaded.maps[STATE_MAP]!.update(new Uint8Array(4), compiled.initialState(REPLAY_CPU));
    } catch (err) {
      loaded.close();
      throw err;
    }
    return new KernelRunner(compiled, loaded, testRun);
  }

  run(bytes: Uint8Array, offset = 0, length = bytes.length - offset): number | undefined {
    let r;
    try {
      r = this.testRun(this.loaded.prog, { data: offset === 0 && length === bytes.length ? bytes : bytes.subarray(offset, offset + length) });
    } catch (err) {
      // A BpfError from the test run (checked by shape: src/kernel loads only for this engine).
      if ((err as { operation?: string; errno?: number }).operation === 'test-run' && (err as { errno?: number }).errno === EINVAL) return undefined;
      throw err;
    }
    this.out = r.data;
    return r.retval;
  }

  get output(): Uint8Array {
    return this.out;
  }

  get outBytes(): Uint8Array {
    return this.out;
  }

  readonly outOffset = 0;
  /** The test run hands back a new buffer every time, changed or not. */
  readonly wrote = true;
  readonly writtenLow = 0;
  readonly writtenHigh = Infinity;

  heldMap(): HeldCounts | undefined {
    return this.loaded.maps[HELD_MAP];
  }

  get outLength(): number {
    return this.out.length;
  }

  actedSinceLast(into: Int32Array): number {
    const rules = this.counters();
    let k = 0;
    for (let i = 0; i < rules.length; i++) {
      const v = rules[i]!.acted;
      if (v !== this.lastActed[i]) {
        this.lastActed[i] = v;
        into[k++] = i;
      }
    }
    return k;
  }

  counters(): RuleCounters[] {
    return this.loaded.counters().rules;
  }

  close(): void {
    this.loaded.close();
  }
}
