/**
 * The VM's entry point: prepare a program once, run it on packet after packet.
 *
 *   const vm = new Vm(insns, { programType: 'sched_cls', maps: { state: createMap({...}) }, mapRefs });
 *   const r = vm.run(packetBytes, { ktimeNs: 1_000 });
 *   r.retval; r.packet; r.redirect; r.clones; r.ctxField('mark');
 *
 * Two engines give the same results: 'jit' (default) translates the program to one
 * JavaScript function, built once and cached by bytecode; 'interpreter' is the readable
 * reference.
 */
import type { Insn } from '../bpf/insn.js';
import { UsageError } from '../errors.js';
import { prepareProgram, type PreparedProgram, type ProgramOptions } from './program.js';
import { Machine, type RunInput, type ClonedPacket } from './machine.js';
import { interpret } from './interpreter.js';
import { compileProgram, type CompiledProgram } from './jit.js';

export type Engine = 'interpreter' | 'jit';

export interface VmOptions extends ProgramOptions {
  engine?: Engine;
  /** Seed of bpf_get_prandom_u32's generator (default 1). */
  seed?: number;
  /** What bpf_get_smp_processor_id returns and which copy of per-CPU maps the program sees (default 0). */
  cpu?: number;
}

/** The outcome of the latest run; read it before the next run, which reuses it. */
export class RunResult {
  retval = 0;
  constructor(private readonly m: Machine) {}

  /**
   * The packet as it leaves (a view, valid until the next run): of the machine's buffer when
   * the program wrote to the packet, else of the bytes the run was given.
   */
  get packet(): Uint8Array {
    return this.m.pkt.subarray(this.m.pktStart, this.m.pktEnd);
  }

  get packetLength(): number {
    return this.m.pktEnd - this.m.pktStart;
  }

  /** The packet as it leaves, copied (Uint8Array's slice: the packet may still be in the caller's Buffer, whose slice is a view). */
  copyPacket(): Uint8Array {
    return Uint8Array.prototype.slice.call(this.m.pkt, this.m.pktStart, this.m.pktEnd);
  }

  /** Target of the last bpf_redirect call, if any ("sent to ifindex N"). */
  get redirect(): { ifindex: number; ingress: boolean } | undefined {
    return this.m.redirectIfindex < 0 ? undefined : { ifindex: this.m.redirectIfindex, ingress: (this.m.redirectFlags & 1) !== 0 };
  }

  /** Copies sent by bpf_clone_redirect ("sent again"), in call order. */
  get clones(): readonly ClonedPacket[] {
    return this.m.clones;
  }

  /** A context field after the run (mark, priority, tc_classid, cb[0] ...). */
  ctxField(name: string): number {
    return this.m.ctxField(name);
  }
}

export class Vm {
  readonly program: PreparedProgram;
  readonly machine: Machine;
  readonly engine: Engine;
  private readonly compiled: CompiledProgram | undefined;
  private readonly result: RunResult;

  constructor(insns: readonly Insn[], opts: VmOptions) {
    this.program = prepareProgram(insns, opts);
    const cpu = opts.cpu ?? 0;
    if (!Number.isInteger(cpu) || cpu < 0) throw new UsageError(`cpu must be a non-negative integer, got ${cpu}`);
    for (const map of this.program.maps) {
      if (cpu >= map.cpus && map.type === 'percpu_array') {
        throw new UsageError(`cpu ${cpu} is not one of the ${map.cpus} CPUs of per-CPU map ${map.name}`);
      }
    }
    this.machine = new Machine(this.program, { seed: opts.seed, cpu });
    this.engine = opts.engine ?? 'jit';
    this.compiled = this.engine === 'jit' ? compileProgram(this.program) : undefined;
    this.result = new RunResult(this.machine);
  }

  /** Runs the program once on a copy of `packet`. */
  run(packet: Uint8Array, input?: RunInput): RunResult {
    const m = this.machine;
    m.begin(packet, input);
    this.result.retval = this.compiled ? this.compiled.run(m) : interpret(m);
    return this.result;
  }

  /** run() on the packet bytes[offset, offset + length), without making a view of it. */
  runAt(bytes: Uint8Array, offset: number, length: number, input?: RunInput): RunResult {
    const m = this.machine;
    m.beginAt(bytes, offset, length, input);
    this.result.retval = this.compiled ? this.compiled.run(m) : interpret(m);
    return this.result;
  }

  /** The generated JavaScript (JIT engine only), for debugging. */
  get source(): string | undefined {
    return this.compiled?.source;
  }
}
