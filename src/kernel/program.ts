/**
 * Loading programs (BPF_PROG_LOAD) and running them on test input (BPF_PROG_TEST_RUN).
 *
 * Loading first goes without a verifier log (faster, and no buffer). If the kernel refuses,
 * it loads again with a log, growing the buffer until the log fits, and throws a
 * VerifierError carrying the whole log; its message shows the log's last lines, where the
 * verifier says why.
 */
import type { MapRef } from '../bpf/asm.js';
import { decode, encode, slotCount, type Insn } from '../bpf/insn.js';
import { BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE, LD_IMM64 } from '../bpf/opcodes.js';
import { NetmangleError } from '../errors.js';
import { closeFd, sanitizeObjectName } from './fd.js';
import { programInfoByFd, type ProgramInfo } from './info.js';
import type { BpfMap } from './map.js';
import {
  ATTACH_TYPES, Attr, BpfError, Cmd, E2BIG, EACCES, EAGAIN, EFAULT, EINTR, EINVAL, ENOMEM, ENOSPC, OBJ_NAME_LEN, Off, PROG_TYPES, bpfTry,
  cString, errnoName, type AttachType, type ProgramType,
} from './sys.js';

export interface LoadProgramOptions {
  type: ProgramType;
  /** Instructions (Insn[] from the Assembler) or their encoded bytes. */
  insns: readonly Insn[] | Uint8Array;
  /** Default 'GPL' (many helpers are GPL-only). */
  license?: string;
  /** At most 15 characters; other characters than [A-Za-z0-9_.] become '_'. */
  name?: string;
  /** Needed by some types at load time (e.g. xdp_devmap, cgroup hooks). */
  expectedAttachType?: AttachType | number;
  /** Maps the program refers to by name, filled into its LD_IMM64 instructions via `mapRefs`. */
  maps?: Record<string, BpfMap>;
  /** From Assembler.assemble(): which LD_IMM64 (by instruction index) names which map. */
  mapRefs?: readonly MapRef[];
  /**
   * 0 (default): a log only when loading fails. 1 or 2: always load with a log of that
   * verbosity and keep it in `Program.verifierLog`.
   */
  logLevel?: number;
  /** BPF_F_* program flags (e.g. BPF_F_XDP_HAS_FRAGS = 1 << 5). */
  flags?: number;
}

/**
 * A limit of the verifier that a program reached (it gave up, rather than found a fault):
 * 'insns', more than 1,000,000 instructions processed over all paths; 'jumps', more than
 * 8,192 branches pending at once on one path.
 */
export interface VerifierLimit {
  kind: 'insns' | 'jumps';
  /** The verifier's own words, e.g. "BPF program is too large. Processed 1000001 insn". */
  line: string;
}

const LIMIT_LINES: Array<[VerifierLimit['kind'], RegExp]> = [
  ['insns', /BPF program is too large\. Processed \d+ insn/],
  ['jumps', /The sequence of \d+ jumps is too complex/],
];

/** The verifier limit a log ends with (its last lines), if any. */
export function verifierLimit(log: string): VerifierLimit | undefined {
  const lines = log.split('\n').map((l) => l.trim()).filter((l) => l.length > 0).slice(-8);
  for (const line of lines.reverse()) {
    for (const [kind, re] of LIMIT_LINES) {
      const m = re.exec(line);
      if (m) return { kind, line: m[0] };
    }
  }
  return undefined;
}

/** The verifier refused the program; `log` holds its whole log (its end, when `truncated`). */
export class VerifierError extends BpfError {
  readonly log: string;
  /** True when the log was still cut short at the largest buffer tried. */
  readonly truncated: boolean;
  /** Set when the verifier gave up at one of its limits instead of finding a fault. */
  readonly limit?: VerifierLimit;
  constructor(object: string, errno: number, log: string, truncated: boolean) {
    const tail = lastLines(log, 6);
    const limit = verifierLimit(log);
    super('load', object, errno, {
      message: limit
        ? `the kernel's verifier gave up on ${object} at its limit: ${limit.line}`
        : `the kernel's verifier rejected ${object} (${errnoName(errno)}):\n${tail.replace(/^/gm, '    ')}`,
      hint: limit
        ? 'make the program simpler: fewer branches, or split it into several programs'
        : `these are the last lines of the verifier's log; the whole log (${log.split('\n').length} lines) is in VerifierError.log`,
    });
    this.log = log;
    this.truncated = truncated;
    if (limit) this.limit = limit;
  }
}

function lastLines(log: string, n: number): string {
  const lines = log.split('\n').map((l) => l.trimEnd()).filter((l) => l.length > 0);
  if (lines.length === 0) return '(the verifier left no log)';
  return lines.slice(-n).join('\n');
}

export class Program implements Disposable {
  readonly id: number;
  readonly name: string;
  /** e.g. 'xdp', 'sched_cls'. */
  readonly type: string;
  /** The verifier's log when loaded with logLevel > 0. */
  readonly verifierLog?: string;
  private fdValue: number;

  constructor(fd: number, info: { id: number; name: string; type: string }, verifierLog?: string) {
    this.fdValue = fd;
    this.id = info.id;
    this.name = info.name;
    this.type = info.type;
    if (verifierLog !== undefined) this.verifierLog = verifierLog;
  }

  /** Wraps an fd from BPF_OBJ_GET or BPF_PROG_GET_FD_BY_ID (takes ownership). */
  static fromFd(fd: number): Program {
    const info = programInfoByFd(fd);
    return new Program(fd, info);
  }

  get fd(): number {
    if (this.fdValue < 0) throw new NetmangleError(`program '${this.name}' (id ${this.id}) is already closed`);
    return this.fdValue;
  }

  get closed(): boolean {
    return this.fdValue < 0;
  }

  info(): ProgramInfo {
    return programInfoByFd(this.fd);
  }

  /** Closes this fd. The program stays loaded while a link, a pin or an attachment holds it. */
  close(): void {
    closeFd(this.fdValue);
    this.fdValue = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Writes map fds into the LD_IMM64 instructions that name maps. */
function resolveMaps(insns: readonly Insn[], refs: readonly MapRef[], maps: Record<string, BpfMap>): Insn[] {
  const out = insns.map((i) => ({ ...i }));
  for (const ref of refs) {
    const map = maps[ref.map];
    if (!map) {
      throw new NetmangleError(`the program refers to map '${ref.map}', which was not given to loadProgram`, {
        hint: `pass it in maps: { ${ref.map}: createMap(...) }`,
      });
    }
    const insn = out[ref.index];
    if (!insn || insn.code !== LD_IMM64) {
      throw new NetmangleError(`map reference '${ref.map}' points at instruction ${ref.index}, which is not a 64-bit load`);
    }
    insn.src = ref.kind === 'value' ? BPF_PSEUDO_MAP_VALUE : BPF_PSEUDO_MAP_FD;
    insn.imm = map.fd;
    insn.imm2 = ref.kind === 'value' ? ref.offset : 0;
  }
  return out;
}

const LOG_START = 64 * 1024;
/** log_level bit: only the verifier's messages and its statistics, not every instruction. */
const BPF_LOG_STATS = 4;
/** Loads again after EAGAIN or EINTR (a signal during verification) at most this many times. */
const LOAD_RETRIES = 5;
/** The kernel takes up to UINT32_MAX >> 2 bytes of log (16 MiB - 1 before 6.4); stop well below. */
const LOG_MAX = 256 * 1024 * 1024;

/**
 * Loads a program. Throws VerifierError (with the log) when the verifier refuses it, and
 * BpfError for everything else (EPERM without root, E2BIG, ...).
 */
export function loadProgram(opts: LoadProgramOptions): Program {
  const typeId = PROG_TYPES[opts.type];
  if (typeId === undefined) {
    throw new NetmangleError(`unknown program type '${opts.type}'`, { hint: `use one of: ${Object.keys(PROG_TYPES).join(', ')}` });
  }
  let insns: Buffer;
  let count: number;
  if (opts.mapRefs && opts.mapRefs.length > 0) {
    const list = opts.insns instanceof Uint8Array ? decode(opts.insns) : opts.insns;
    const bytes = encode(resolveMaps(list, opts.mapRefs, opts.maps ?? {}));
    insns = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    count = insns.length / 8;
  } else if (opts.insns instanceof Uint8Array) {
    if (opts.insns.length % 8 !== 0) throw new NetmangleError(`program bytecode is ${opts.insns.length} bytes, not a multiple of 8`);
    insns = Buffer.from(opts.insns.buffer, opts.insns.byteOffset, opts.insns.byteLength);
    count = insns.length / 8;
  } else {
    const bytes = encode(opts.insns);
    insns = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    count = slotCount(opts.insns);
  }
  if (count === 0) throw new NetmangleError('cannot load an empty program');

  const name = sanitizeObjectName(opts.name);
  const license = cString(opts.license ?? 'GPL');
  const expected = opts.expectedAttachType === undefined ? 0
    : typeof opts.expectedAttachType === 'number' ? opts.expectedAttachType : ATTACH_TYPES[opts.expectedAttachType];
  if (expected === undefined) throw new NetmangleError(`unknown attach type '${String(opts.expectedAttachType)}'`);
  const object = `${opts.type} program${name ? ` '${name}'` : ''} (${count} instructions)`;

  const attempt = (logLevel: number, log: Buffer | null): { ret: number; attr: Attr } => {
    const attr = new Attr()
      .u32(Off.progLoad.progType, typeId)
      .u32(Off.progLoad.insnCnt, count)
      .ptr(Off.progLoad.insns, insns)
      .ptr(Off.progLoad.license, license)
      .u32(Off.progLoad.progFlags, opts.flags ?? 0)
      .str(Off.progLoad.progName, name, OBJ_NAME_LEN)
      .u32(Off.progLoad.expectedAttachType, expected);
    if (log) {
      attr.u32(Off.progLoad.logLevel, logLevel).u32(Off.progLoad.logSize, log.length).ptr(Off.progLoad.logBuf, log);
    }
    // A signal during a long verification makes the load fail with EAGAIN: load again, as
    // libbpf does (a few times, so that a stream of signals still ends).
    for (let i = 0; ; i++) {
      const ret = bpfTry(Cmd.PROG_LOAD, attr);
      if ((ret === -EAGAIN || ret === -EINTR) && i < LOAD_RETRIES) continue;
      return { ret, attr };
    }
  };

  const wrap = (fd: number, log?: string): Program => {
    try {
      const info = programInfoByFd(fd);
      return new Program(fd, { id: info.id, name: info.name, type: opts.type }, log);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  };

  const wantLog = (opts.logLevel ?? 0) > 0;
  let firstErrno = 0;
  if (!wantLog) {
    const { ret } = attempt(0, null);
    if (ret >= 0) return wrap(ret);
    // Only a verifier refusal is worth a second load with a log: a fault (EACCES, EINVAL), or
    // a limit (E2BIG: too many instructions processed; jumps too complex: E2BIG, or EFAULT and
    // ENOMEM on older kernels), which only the log tells apart.
    if (![EACCES, EINVAL, ENOSPC, E2BIG, EFAULT, ENOMEM].includes(-ret)) throw new BpfError('load', object, -ret);
    firstErrno = -ret;
    // First a log of the verifier's messages and statistics only (BPF_LOG_STATS): it names a
    // limit at the cost of one more verification, where a full log of a million processed
    // instructions takes many times longer to write.
    const brief = Buffer.alloc(LOG_START);
    const again = attempt(BPF_LOG_STATS, brief);
    if (again.ret >= 0) return wrap(again.ret);
    const text = readLog(brief);
    if (verifierLimit(text)) throw new VerifierError(object, firstErrno, text, false);
  }

  const level = wantLog ? opts.logLevel! : 1;
  let size = LOG_START;
  for (;;) {
    const log = Buffer.alloc(size);
    const { ret, attr } = attempt(level, log);
    const text = readLog(log);
    if (ret >= 0) return wrap(ret, wantLog ? text : undefined);
    const trueSize = attr.getU32(Off.progLoad.logTrueSize);
    // 6.4+ keeps the log's end when it overflows: a limit is said there, and a log of a
    // million instructions is not worth another load with a buffer to hold it.
    if (ret === -ENOSPC && !wantLog && verifierLimit(text)) throw new VerifierError(object, firstErrno || E2BIG, text, true);
    if (ret === -ENOSPC && size < LOG_MAX) {
      // 6.4+ says how big the log really is; older kernels only say "too small".
      size = trueSize > size ? Math.min(LOG_MAX, trueSize + 1024) : Math.min(LOG_MAX, size * 4);
      continue;
    }
    if (text.length === 0) throw new BpfError('load', object, -ret);
    throw new VerifierError(object, -ret, text, ret === -ENOSPC);
  }
}

function readLog(log: Buffer): string {
  const end = log.indexOf(0);
  return log.subarray(0, end < 0 ? log.length : end).toString('utf8');
}

export interface TestRunOptions {
  /** The packet (for xdp and sched_cls at least 14 bytes: an Ethernet header). */
  data: Uint8Array;
  /** Room for the output packet; default data.length + 4096 (programs may grow it). */
  dataSizeOut?: number;
  /** Input context (struct xdp_md or __sk_buff), optional. */
  ctxIn?: Uint8Array;
  /** Room for the output context; default ctxIn's length (0 when none). */
  ctxSizeOut?: number;
  /** Runs the program this many times (duration is then the mean). Default 1. */
  repeat?: number;
  /** BPF_F_TEST_* flags. */
  flags?: number;
  /** CPU to run on (with BPF_F_TEST_RUN_ON_CPU in flags). */
  cpu?: number;
}

export interface TestRunResult {
  /** The program's return value as a signed 32-bit number (XDP_PASS = 2, TC_ACT_OK = 0, TCX_NEXT = -1). */
  retval: number;
  /** The packet after the program ran. */
  data: Uint8Array;
  ctx?: Uint8Array;
  /** Mean nanoseconds per run, as the kernel measured it. */
  durationNs: number;
}

/** Runs `prog` on a packet in the kernel (BPF_PROG_TEST_RUN), without any interface. */
export function testRun(prog: Program, opts: TestRunOptions): TestRunResult {
  const dataIn = Buffer.from(opts.data.buffer, opts.data.byteOffset, opts.data.byteLength);
  const ctxIn = opts.ctxIn ? Buffer.from(opts.ctxIn.buffer, opts.ctxIn.byteOffset, opts.ctxIn.byteLength) : null;
  let dataOutSize = opts.dataSizeOut ?? dataIn.length + 4096;
  let ctxOutSize = opts.ctxSizeOut ?? (ctxIn ? ctxIn.length : 0);
  const object = `program '${prog.name}' (id ${prog.id})`;
  for (let attempt = 0; ; attempt++) {
    const dataOut = Buffer.alloc(dataOutSize);
    const ctxOut = ctxOutSize > 0 ? Buffer.alloc(ctxOutSize) : null;
    const attr = new Attr()
      .u32(Off.test.progFd, prog.fd)
      .u32(Off.test.dataSizeIn, dataIn.length)
      .u32(Off.test.dataSizeOut, dataOut.length)
      .ptr(Off.test.dataIn, dataIn)
      .ptr(Off.test.dataOut, dataOut)
      .u32(Off.test.repeat, opts.repeat ?? 1)
      .u32(Off.test.ctxSizeIn, ctxIn ? ctxIn.length : 0)
      .u32(Off.test.ctxSizeOut, ctxOut ? ctxOut.length : 0)
      .ptr(Off.test.ctxIn, ctxIn)
      .ptr(Off.test.ctxOut, ctxOut)
      .u32(Off.test.flags, opts.flags ?? 0)
      .u32(Off.test.cpu, opts.cpu ?? 0);
    const ret = bpfTry(Cmd.PROG_TEST_RUN, attr);
    const dataLen = attr.getU32(Off.test.dataSizeOut);
    const ctxLen = attr.getU32(Off.test.ctxSizeOut);
    if (ret === -ENOSPC && attempt === 0 && (dataLen > dataOut.length || ctxLen > (ctxOut?.length ?? 0))) {
      // The output did not fit; the kernel said how big it is.
      dataOutSize = Math.max(dataOutSize, dataLen);
      ctxOutSize = Math.max(ctxOutSize, ctxLen);
      continue;
    }
    if (ret === -EINTR && attempt < 5) continue;
    if (ret < 0) {
      const hint = ret === -EINVAL
        ? 'check the input: xdp and sched_cls programs need at least a 14-byte Ethernet header, and the context must match the program type'
        : undefined;
      throw new BpfError('test-run', object, -ret, hint ? { hint } : {});
    }
    const result: TestRunResult = {
      retval: attr.buf.readInt32LE(Off.test.retval),
      data: new Uint8Array(dataOut.subarray(0, Math.min(dataLen, dataOut.length))),
      durationNs: attr.getU32(Off.test.duration),
    };
    if (ctxOut) result.ctx = new Uint8Array(ctxOut.subarray(0, Math.min(ctxLen, ctxOut.length)));
    return result;
  }
}
